/*
 * page.h - the short HTML bodies detour sends when it answers itself:
 * redirects (a link to the new location) and errors. Pure formatting.
 */
#ifndef DETOUR_PAGE_H
#define DETOUR_PAGE_H

#include "detour/common.h"

/* "Temporary Redirect", "Bad Gateway", ...; "Unknown" for codes without one. */
const char *dt_status_reason(int status);

/*
 * Write the redirect note for STATUS and LOCATION (HTML-escaped) into OUT.
 * Returns the length; when it does not fit, the length it would need (the
 * caller sizes OUT with dt_page_redirect_size()).
 */
size_t dt_page_redirect(char *out, size_t cap, int status, dt_str location);
size_t dt_page_redirect_size(dt_str location);

/* Write a short error page for STATUS with an explanation (plain text, escaped). */
size_t dt_page_error(char *out, size_t cap, int status, const char *detail);

/* Append S to OUT HTML-escaped (& < > " '); returns bytes written or needed. */
size_t dt_html_escape(char *out, size_t cap, dt_str s);

#endif

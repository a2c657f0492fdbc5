/*
 * page.c - HTML bodies for detour's own answers.
 */
#include <stdio.h>

#include "detour/page.h"

const char *dt_status_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 508:
        return "Loop Detected";
    default:
        return "Unknown";
    }
}

/* Append S to OUT if it fits; count it either way (snprintf's convention). */
static void put(char *out, size_t cap, size_t *n, const char *s, size_t len)
{
    if (*n + len <= cap)
        memcpy(out + *n, s, len);
    *n += len;
}

static const char *html_entity(char c)
{
    switch (c) {
    case '&':
        return "&amp;";
    case '<':
        return "&lt;";
    case '>':
        return "&gt;";
    case '"':
        return "&quot;";
    case '\'':
        return "&#39;";
    default:
        return NULL;
    }
}

/* Runs of plain bytes go out in one copy: a URL rarely needs an entity. */
size_t dt_html_escape(char *out, size_t cap, dt_str s)
{
    size_t n = 0, i = 0;

    while (i < s.n) {
        const char *rep = NULL;
        size_t end = i;
        while (end < s.n && (rep = html_entity(s.p[end])) == NULL)
            end++;
        put(out, cap, &n, s.p + i, end - i);
        if (rep != NULL) {
            put(out, cap, &n, rep, strlen(rep));
            end++;
        }
        i = end;
    }
    return n;
}

#define PUT_LIT(lit) put(out, cap, &n, lit, sizeof(lit) - 1)
#define REDIRECT_OPEN "<!DOCTYPE html>\n<html><head><title>"
#define REDIRECT_MID "</title></head>\n<body><h1>"
#define REDIRECT_LINK "</h1>\n<p>The document is at <a href=\""
#define REDIRECT_TAIL "\">this location</a>.</p></body></html>\n"
#define REASON_MAX 32 /* longer than any reason phrase dt_status_reason returns */

size_t dt_page_redirect_size(dt_str location)
{
    /* The status code and a space, the reason twice, and the location:
     * escaping at most multiplies a byte by six ("&quot;"). */
    return sizeof(REDIRECT_OPEN) + 4 + REASON_MAX + sizeof(REDIRECT_MID) + REASON_MAX +
           sizeof(REDIRECT_LINK) + location.n * 6 + sizeof(REDIRECT_TAIL);
}

/* Built by appending rather than with snprintf: it runs for every redirect. */
size_t dt_page_redirect(char *out, size_t cap, int status, dt_str location)
{
    const char *reason = dt_status_reason(status);
    size_t rlen = strlen(reason), n = 0;
    char code[4] = {(char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10),
                    (char)('0' + status % 10), ' '};

    PUT_LIT(REDIRECT_OPEN);
    put(out, cap, &n, code, sizeof code);
    put(out, cap, &n, reason, rlen);
    PUT_LIT(REDIRECT_MID);
    put(out, cap, &n, reason, rlen);
    PUT_LIT(REDIRECT_LINK);
    n += dt_html_escape(n < cap ? out + n : out, n < cap ? cap - n : 0, location);
    PUT_LIT(REDIRECT_TAIL);
    if (n < cap)
        out[n] = '\0';
    return n;
}

size_t dt_page_error(char *out, size_t cap, int status, const char *detail)
{
    const char *reason = dt_status_reason(status);
    char esc[512];
    size_t elen = dt_html_escape(esc, sizeof esc - 1, (dt_str){detail, strlen(detail)});
    if (elen > sizeof esc - 1)
        elen = 0;
    int n = snprintf(out, cap,
                     "<!DOCTYPE html>\n<html><head><title>%d %s</title></head>\n"
                     "<body><h1>%d %s</h1>\n<p>%.*s</p>\n<hr><p>detour</p></body></html>\n",
                     status, reason, status, reason, (int)elen, esc);
    return n < 0 ? 0 : (size_t)n;
}

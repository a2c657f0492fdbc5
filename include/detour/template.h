/*
 * template.h - Location templates: "https://new.example/$suffix$is_args$args".
 *
 * A template is compiled once at config load into literal and variable
 * pieces; expansion is a single pass into a caller buffer. Variables:
 * $scheme $host $uri $args $is_args $request_uri $suffix $1..$9 $target
 * $mapped, and $$ for a literal '$'. ${name} is accepted as well (an
 * extension) so that a variable can be followed by a letter. An unknown
 * variable is a compile error.
 *
 * Substituted values are raw as received, except that every byte that may
 * not appear in a URI (controls, space, DEL, bytes >= 0x80, and " < > \ ^ `
 * { | }) is percent-encoded, so CR, LF and NUL can never reach a header.
 */
#ifndef DETOUR_TEMPLATE_H
#define DETOUR_TEMPLATE_H

#include "detour/common.h"

typedef enum dt_tvar {
    DT_TVAR_SCHEME = 0,
    DT_TVAR_HOST,
    DT_TVAR_URI,
    DT_TVAR_ARGS,
    DT_TVAR_IS_ARGS,
    DT_TVAR_REQUEST_URI,
    DT_TVAR_SUFFIX,
    DT_TVAR_TARGET,
    DT_TVAR_MAPPED,
    DT_TVAR_GROUP1, /* $1 .. $9 are DT_TVAR_GROUP1 + 0 .. 8 */
    DT_TVAR_COUNT = DT_TVAR_GROUP1 + 9
} dt_tvar;

/* Values for expansion; a variable with .p == NULL expands to nothing. */
typedef struct dt_template_vars {
    dt_str v[DT_TVAR_COUNT];
} dt_template_vars;

typedef struct dt_template dt_template;

/*
 * Compile SRC. Returns NULL on error with a message in err (no file/line:
 * the caller adds them). A literal containing a control byte or a space is
 * an error too. The result is owned by the caller: dt_template_free().
 */
dt_template *dt_template_compile(const char *src, char *err, size_t errlen);
void dt_template_free(dt_template *t);

/* Bit (1u << var) set for every variable the template uses. */
uint32_t dt_template_uses(const dt_template *t);

/* The source text given to dt_template_compile(). */
const char *dt_template_source(const dt_template *t);

/* Does the template start with '/' (a relative Location, sent as is)? */
bool dt_template_is_relative(const dt_template *t);

/*
 * Expand into OUT (capacity CAP, NUL-terminated on success). Returns the
 * length written, or -1 when it does not fit.
 */
long dt_template_expand(const dt_template *t, const dt_template_vars *vars, char *out, size_t cap);

/* Append SRC to OUT percent-encoding bytes not allowed in a URI; -1 when it does not fit. */
long dt_uri_encode_into(dt_str src, char *out, size_t cap);

#endif

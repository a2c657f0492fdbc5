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
 * Nothing is ever decoded: "%0d%0a" in a request stays "%0d%0a".
 *
 * Literal text follows the same rule: a control byte or a space in it is a
 * compile error, the other unsafe bytes (e.g. UTF-8) are encoded at compile
 * time. "$name" takes the longest run of [A-Za-z0-9_] ("$urix" is an unknown
 * variable; write "${uri}x"), "$1".."$9" take a single digit, and a '$' that
 * starts no variable is an error.
 *
 * One safety rule beyond plain substitution: a Location that would start
 * with "//" (a protocol-relative URL, i.e. another site) because of a value
 * taken from the request gets its second slash encoded ("/%2F..."), so
 * "/$1" or "$uri" cannot be turned into an open redirect.
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

/*
 * Values for expansion; a variable with .p == NULL expands to nothing, except
 * the derived ones: $is_args then is "?" when $args is non-empty, and
 * $request_uri is $uri$is_args$args.
 */
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

/*
 * Write SRC to OUT percent-encoding the bytes not allowed in a URI (upper-case
 * hex), NUL-terminated. Returns the length written (without the NUL), or -1
 * when it and the NUL do not fit in CAP. Callers append by passing the end of
 * what they have written so far.
 */
long dt_uri_encode_into(dt_str src, char *out, size_t cap);

#endif

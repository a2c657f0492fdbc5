/*
 * headers.h - HTTP header rules that libmicrohttpd does not apply for us:
 * request hygiene (what must be refused before anything is relayed) and the
 * hop-by-hop filter applied to both directions.
 *
 * Everything here is pure: it looks at byte strings and returns facts.
 */
#ifndef DETOUR_HEADERS_H
#define DETOUR_HEADERS_H

#include "detour/common.h"

/* RFC 9110 tchar: is every byte of S a token character (and S non-empty)? */
bool dt_is_token(dt_str s);

/* A field value without CTLs (HTAB allowed), DEL, CR, LF or NUL. */
bool dt_header_value_ok(dt_str v);

/*
 * Is NAME one of the fixed hop-by-hop headers: Connection, Keep-Alive,
 * Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade (case-insensitive)?
 */
bool dt_header_is_hop_by_hop(dt_str name);

/* The tokens listed in Connection headers, gathered across all of them. */
#define DT_CONN_TOKENS_MAX 16
typedef struct dt_conn_tokens {
    dt_str tok[DT_CONN_TOKENS_MAX];
    size_t n;
    bool overflow; /* more than DT_CONN_TOKENS_MAX tokens: the request is refused (400) */
} dt_conn_tokens;

/* Add the comma-separated tokens of one Connection header VALUE. */
void dt_conn_tokens_add(dt_conn_tokens *t, dt_str value);

/* Is NAME listed (case-insensitive)? */
bool dt_conn_tokens_has(const dt_conn_tokens *t, dt_str name);

/* Should header NAME be dropped when relaying (fixed list or listed in Connection)? */
bool dt_header_drop(dt_str name, const dt_conn_tokens *t);

/*
 * Request hygiene. Feed every request header in arrival order to
 * dt_hygiene_add(), then call dt_hygiene_finish(). The first problem wins and
 * stays: status 400 (malformed, smuggling attempt) or 501 (a transfer coding
 * other than chunked), with a short reason for the log. On success the
 * framing facts are filled in.
 */
typedef struct dt_hygiene {
    int status;         /* 0 ok, 400 or 501 */
    const char *reason; /* static string when status != 0 */
    int n_content_length;
    uint64_t content_length; /* valid when n_content_length == 1 */
    bool has_te;
    bool chunked; /* Transfer-Encoding is exactly "chunked" */
    bool expect_continue;
    int n_host;
    dt_conn_tokens conn;
    bool via_seen; /* any Via header */
    bool max_forwards_seen;
    int64_t max_forwards; /* valid when max_forwards_seen; -1 when malformed */
} dt_hygiene;

void dt_hygiene_init(dt_hygiene *h);
void dt_hygiene_add(dt_hygiene *h, dt_str name, dt_str value);
/* Returns h->status (0 when the request may go on). */
int dt_hygiene_finish(dt_hygiene *h);

/*
 * libmicrohttpd stores header names and values as pointers into its read
 * buffer: "Name\0<SP/HT>*value". It mangles obs-fold continuation lines by
 * appending them to the name (connection.c process_broken_line), which
 * breaks that layout. Returns true when the layout is the normal one, i.e.
 * the header was a single line. Bytes between name + name_len and value are
 * read only when 0 < distance <= 64; anything else counts as broken.
 */
bool dt_header_layout_ok(const char *name, size_t name_len, const char *value);

/*
 * The same buffer also shows a value cut short: libmicrohttpd measures a
 * value with strlen(), so "X: a<NUL>b" arrives as "a" and the rest is lost.
 * A value normally ends at its line terminator, which libmicrohttpd turned
 * into one NUL (bare LF) or two (CRLF); the next header's name follows right
 * after. Pass the next header's name, or NULL for the last header (then the
 * empty line that ends the head must follow). Returns false when anything
 * else sits between the value and what follows. Reads at most two bytes
 * after the value, both inside the request head.
 */
bool dt_header_value_end_ok(const char *value, size_t value_len, const char *next_name);

/* Does a Via header VALUE name NAME as a received-by pseudonym ("1.1 NAME")? */
bool dt_via_names(dt_str value, dt_str name);

#endif

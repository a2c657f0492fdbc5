/*
 * access.h - who may use detour as a proxy, and where to (forward mode),
 * and whether a destination is detour itself (a loop). Pure functions over
 * the snapshot's `forward` block and listen addresses.
 *
 * Destinations are checked twice: by name when the request arrives (host
 * patterns, and CIDRs when the host is an address literal), and by address
 * once the name is resolved, just before connecting (CIDRs, and the loop
 * check), so a name cannot smuggle a request to a refused address.
 */
#ifndef DETOUR_ACCESS_H
#define DETOUR_ACCESS_H

#include <sys/socket.h>

#include "detour/config.h"

typedef enum dt_access {
    DT_ACCESS_DENY = 0,
    DT_ACCESS_ALLOW,
    DT_ACCESS_BY_ADDRESS, /* no name rule allows it; the resolved address decides */
} dt_access;

/* Is the client at SA allowed to use forward mode? */
bool dt_access_client(const dt_forward *fw, const struct sockaddr *sa);

/* Decide on destination HOST (no port; IPv6 with or without brackets) and PORT by name. */
dt_access dt_access_dest_name(const dt_forward *fw, dt_str host, unsigned port);

/* Decide on a resolved destination address (its port included). */
bool dt_access_dest_addr(const dt_forward *fw, const struct sockaddr *sa);

/* Does ADDR fall inside CIDR? */
bool dt_cidr_contains(const dt_cidr *cidr, const struct sockaddr *sa);

/*
 * Is SA one of detour's own listening addresses (same port, and the same
 * address, or a wildcard listener and an address of this host)? LOCAL lists
 * this host's addresses (NLOCAL of them), for wildcard listeners.
 */
bool dt_access_is_self(const dt_config *cfg, const struct sockaddr *sa,
                       const struct sockaddr_storage *local, size_t nlocal);

/* Port 1..65535 in CONNECT's allowed list? */
bool dt_access_connect_port(const dt_forward *fw, unsigned port);

#endif

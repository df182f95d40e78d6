/* router/net/fdlimit.h — the process's open-file limit (RLIMIT_NOFILE) sized
 * to the connections it is configured to hold: every connection is a file
 * descriptor, and a limit below the connection caps turns load into accept
 * failures (EMFILE) before any cap is reached. */
#ifndef KITH_ROUTER_FDLIMIT_H
#define KITH_ROUTER_FDLIMIT_H

/* Descriptors kept aside for what is not a connection: listeners, the
 * loop's ring, epoll, eventfd and signalfd, the database and its journal,
 * the log, ZeroMQ sockets, stdio. */
#define ROUTER_FDLIMIT_SLACK 128u

/* Raises the soft RLIMIT_NOFILE toward the hard limit, as far as `conns`
 * connections plus ROUTER_FDLIMIT_SLACK need (never lowers it). When the
 * hard limit is too low, logs one warning saying how many connections the
 * limit allows and how to raise it. Call it once at start, before threads
 * open files. Returns the number of connections the limit now allows
 * (capped at `conns`). */
unsigned router_fdlimit_raise(unsigned conns);

#endif

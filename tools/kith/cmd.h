/* tools/kith/cmd.h — the kith subcommands. Each takes the arguments after its
 * own name (argv[0] is the subcommand) and returns the process exit code. */
#ifndef KITH_CMD_H
#define KITH_CMD_H

/* Exit codes shared by every command (listed in `kith --help`). */
enum {
    KITH_EXIT_OK = 0,        /* done */
    KITH_EXIT_FAIL = 1,      /* usage, local error, or an invalid input */
    KITH_EXIT_OFFLINE = 2,   /* kith send: no ack before the timeout */
    KITH_EXIT_REJECTED = 3,  /* kith send: the peer refused the envelope */
};

int kith_cmd_daemon(int argc, char **argv);
int kith_cmd_gateway(int argc, char **argv);
int kith_cmd_keygen(int argc, char **argv);
int kith_cmd_id(int argc, char **argv);
int kith_cmd_peers(int argc, char **argv);
int kith_cmd_envelope(int argc, char **argv);
int kith_cmd_send(int argc, char **argv);
int kith_cmd_config(int argc, char **argv);
int kith_cmd_paircode(int argc, char **argv);
int kith_cmd_tokens(int argc, char **argv);
int kith_cmd_audit(int argc, char **argv);
int kith_cmd_agent(int argc, char **argv);
int kith_cmd_service(int argc, char **argv);

#endif

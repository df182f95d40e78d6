/* tools/kith/cmd_agent.c — `kith agent --connect ENDPOINT`: agent workers
 * in their own process, serving turns for a daemon's broker over tcp:// or
 * ipc:// (CURVE when the broker asks for it), until SIGINT/SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/worker.h"
#include "router/log.h"
#include "router/state/config.h"
#include "tools/kith/cli_opts.h"
#include "tools/kith/cmd.h"

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: kith agent --connect ENDPOINT [--provider scripted|openai] [--base-url URL]\n"
            "                  [--model M] [--api-key-env VAR] [--config FILE] [--threads N]\n"
            "                  [--server-key Z85 [--cert FILE]] [--idle-timeout-ms MS]\n"
            "                  [--log-level debug|info|warn|error]\n"
            "Runs agent workers (service kith.agent) that take turns from the daemon's broker\n"
            "at ENDPOINT (tcp://HOST:PORT, ipc://PATH; workers.listen on the daemon). Settings\n"
            "come from FILE's agent.* and workers.* keys (defaults without it), then the flags.\n"
            "--api-key-env names the environment variable holding the provider's API key.\n"
            "--server-key is the broker's CURVE public key (Z85, from $KITH_HOME/workers/broker.cert);\n"
            "--cert this worker's CZMQ certificate, made when missing (an ephemeral one without\n"
            "it); its path is at most 248 bytes, as CZMQ names the secret file FILE_secret.\n"
            "--threads N workers in this process (default 1). --idle-timeout-ms: an openai\n"
            "answer with no byte for this long fails (default 120000). SIGINT/SIGTERM stop and exit 0.\n");
}

int kith_cmd_agent(int argc, char **argv)
{
    const char *connect = NULL, *config = NULL, *server_key = NULL, *cert = NULL;
    const char *provider = NULL, *base_url = NULL, *model = NULL, *key_env = NULL;
    const char *threads_text = "1", *level_text = "info", *idle_text = NULL;
    enum { S_CONNECT = 256, S_PROVIDER, S_BASE_URL, S_MODEL, S_KEY_ENV, S_CONFIG, S_SERVER_KEY, S_CERT,
           S_THREADS, S_LOG_LEVEL, S_IDLE };
    static const struct option flags[] = {
        {"connect", required_argument, NULL, S_CONNECT},
        {"provider", required_argument, NULL, S_PROVIDER},
        {"base-url", required_argument, NULL, S_BASE_URL},
        {"model", required_argument, NULL, S_MODEL},
        {"api-key-env", required_argument, NULL, S_KEY_ENV},
        {"config", required_argument, NULL, S_CONFIG},
        {"server-key", required_argument, NULL, S_SERVER_KEY},
        {"cert", required_argument, NULL, S_CERT},
        {"threads", required_argument, NULL, S_THREADS},
        {"log-level", required_argument, NULL, S_LOG_LEVEL},
        {"idle-timeout-ms", required_argument, NULL, S_IDLE},
        {0},
    };
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = "agent", .help = "agent", .longopts = flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        switch (c) {
        case KITH_OPT_HELP:
            s_usage(stdout);
            return KITH_EXIT_OK;
        case S_CONNECT: connect = optarg; break;
        case S_PROVIDER: provider = optarg; break;
        case S_BASE_URL: base_url = optarg; break;
        case S_MODEL: model = optarg; break;
        case S_KEY_ENV: key_env = optarg; break;
        case S_CONFIG: config = optarg; break;
        case S_SERVER_KEY: server_key = optarg; break;
        case S_CERT: cert = optarg; break;
        case S_THREADS: threads_text = optarg; break;
        case S_LOG_LEVEL: level_text = optarg; break;
        case S_IDLE: idle_text = optarg; break;
        default: return KITH_EXIT_FAIL;
        }
    }
    if (kith_opts_rest(&o) < argc) {
        fprintf(stderr, "kith agent: unexpected argument '%s'; see kith agent --help\n", argv[kith_opts_rest(&o)]);
        return KITH_EXIT_FAIL;
    }
    if (!connect) {
        fprintf(stderr, "kith agent: --connect ENDPOINT is required; see kith agent --help\n");
        return KITH_EXIT_FAIL;
    }
    if (cert && !server_key) {
        fprintf(stderr, "kith agent: --cert needs --server-key; see kith agent --help\n");
        return KITH_EXIT_FAIL;
    }
    /* The key as copied from the daemon's broker.cert: named by its flag
     * here, where the worker library could only say "the broker's CURVE
     * key", two prefixes deep. */
    if (server_key && (strlen(server_key) != 40 ||
                       strspn(server_key, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"
                                          "RSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#") != 40)) {
        fprintf(stderr, "kith agent: --server-key takes the broker's CURVE public key, 40 Z85 "
                        "characters (public-key in the daemon's $KITH_HOME/workers/broker.cert)\n");
        return KITH_EXIT_FAIL;
    }
    char *end = NULL;
    long threads = strtol(threads_text, &end, 10);
    if (!*threads_text || *end || threads < 1 || threads > AGENT_THREADS_MAX) {
        fprintf(stderr, "kith agent: --threads must be 1..%d\n", AGENT_THREADS_MAX);
        return KITH_EXIT_FAIL;
    }
    long idle_ms = 0;
    if (idle_text) {
        idle_ms = strtol(idle_text, &end, 10);
        if (!*idle_text || *end || idle_ms < 1 || idle_ms > 86400000) {
            fprintf(stderr, "kith agent: --idle-timeout-ms must be 1..86400000\n");
            return KITH_EXIT_FAIL;
        }
    }
    router_log_level_t level;
    if (router_log_level_parse(level_text, &level) != 0) {
        fprintf(stderr, "kith agent: --log-level must be debug, info, warn or error\n");
        return KITH_EXIT_FAIL;
    }
    router_log_set_level(level);

    char err[KITH_ERR_MAX] = "";
    router_config_t cfg;
    router_config_defaults(&cfg);
    if ((config && router_config_load_file(&cfg, config, err, sizeof err) != 0) ||
        (provider && router_config_set(&cfg, "agent.provider", provider, err, sizeof err) != 0) ||
        (base_url && router_config_set(&cfg, "agent.base_url", base_url, err, sizeof err) != 0) ||
        (model && router_config_set(&cfg, "agent.model", model, err, sizeof err) != 0) ||
        (key_env && router_config_set(&cfg, "agent.api_key_env", key_env, err, sizeof err) != 0) ||
        router_config_check(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "kith agent: %s\n", err);
        return KITH_EXIT_FAIL;
    }

    /* The broker is in another process: only tcp:// and ipc:// reach it
     * (an inproc:// or empty endpoint would wait for ever on nothing, and
     * a bare word gets ZeroMQ's "Invalid argument"). Checked last, so each
     * flag's own mistake is named first. */
    if ((strncmp(connect, "tcp://", 6) != 0 && strncmp(connect, "ipc://", 6) != 0) ||
        !connect[6]) {
        fprintf(stderr, "kith agent: --connect takes tcp://HOST:PORT or ipc://PATH (the daemon's "
                        "workers.listen), got '%s'\n", connect);
        return KITH_EXIT_FAIL;
    }

    /* Before any thread exists, so the signals reach sigwait below only. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    agent_pool_opts_t po;
    agent_pool_opts_from_config(&po, &cfg);
    po.endpoint = connect;
    po.curve_server_key = server_key;
    po.curve_cert_path = cert;
    po.threads = (unsigned) threads;
    po.provider.idle_timeout_ms = (int) idle_ms;
    agent_pool_t *pool = agent_pool_start(&po, err, sizeof err);
    if (!pool) {
        fprintf(stderr, "kith agent: %s\n", err);
        return KITH_EXIT_FAIL;
    }
    fprintf(stderr, "kith agent: %ld worker%s for %s, provider %s; SIGINT or SIGTERM to stop\n", threads,
            threads == 1 ? "" : "s", connect, router_agent_provider_str(cfg.agent.provider));
    int sig = 0;
    while (sigwait(&set, &sig) != 0)
        ;
    ROUTER_LOG(ROUTER_LOG_INFO, "agent", "signal %d: stopping", sig);
    uint64_t turns = agent_pool_turns(pool);
    agent_pool_stop(&pool);
    /* One closing line operators (and tests) can count turns from. */
    fprintf(stderr, "kith agent: stopped after %llu turn%s\n", (unsigned long long) turns,
            turns == 1 ? "" : "s");
    return KITH_EXIT_OK;
}

/* config.h - the settings of one node, from flags, AMESH_* variables and an
 * INI file.
 *
 * Precedence: a flag beats the environment variable of the same name
 * (--max-payload -> AMESH_MAX_PAYLOAD), which beats the configuration file
 * (--config FILE, else AMESH_CONFIG; key max-payload in its [node] section),
 * which beats the default. For the repeatable --join and --actors, the list
 * of the highest source that gives one replaces the lists of those below.
 * Every limit of principle 3 of the design is here, with its default. */
#ifndef AM_CONFIG_H
#define AM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define AM_MAX_ACTOR_LIBS 16
#define AM_MAX_SEEDS 16
#define AM_MAX_NODE_NAME 128 /* the membership protocol's bound (swim.h) */
#define AM_MAX_REPLICAS 7     /* copies of a state, the owner's included */

struct am_config {
    char name[256];          /* default: the advertise address */
    char bind[64];           /* 127.0.0.1:7946 */
    char advertise[64];      /* default: bind */
    char data[1024];         /* ./data */
    uint64_t sync_interval_ms; /* 0: durable (the default); else interval:MS */
    int log_level;           /* enum am_log_level */
    int log_format;          /* enum am_log_format: text (the default) | json */
    char config[1024];       /* the configuration file read; empty: none */
    char joins[AM_MAX_SEEDS][64]; /* --join seeds, HOST:PORT */
    int njoins;
    char profile[8];         /* lan | local | wan (lan) */
    char key_file[1024];     /* cluster key; empty: none */
    const char *actor_libs[AM_MAX_ACTOR_LIBS]; /* into argv, the environment or lib_paths */
    char lib_paths[AM_MAX_ACTOR_LIBS][256]; /* the --actors read from the file */
    int nactor_libs;
    size_t max_payload;      /* 2 MiB */
    size_t max_state;        /* 4 MiB */
    unsigned mailbox;        /* 1024 */
    size_t max_actors;       /* 1,000,000 */
    uint64_t idle_ms;        /* 60,000 */
    unsigned max_connections; /* 10,000 */
    unsigned max_inflight;   /* 4,096 per connection */
    unsigned forward_timeout_ms; /* 5,000: reply deadline of a call forwarded to its owner */
    unsigned anti_entropy_ms;    /* 30,000: digest comparison with each replica (0: off) */
    unsigned replicas;       /* 2: copies of each state, the owner's included */
    char http[64];           /* the HTTP API's HOST:PORT; empty: off (the default) */
    char http_token_file[1024]; /* the HTTP API's bearer token; empty: derived from the key */
    int http_auth_all;       /* --http-auth: 0 api (the default), 1 all (/metrics too) */
    unsigned http_timeout_ms; /* 10,000: an HTTP connection without a request is closed */
};

/* Fills c from argv (argv[0] is "node"), the environment and the
 * configuration file they name. Returns 0, 1 when --help was printed, or
 * -EINVAL with a message in err (a file's errors name it and the line:
 * "amesh.conf:7: unknown key 'max_payload' (did you mean 'max-payload'?)").
 * Strings in c may point into argv, the environment or c itself, so c must
 * not be copied. Does not apply the log settings (am_log_setup,
 * am_log_set_format do). */
int am_config_parse(struct am_config *c, int argc, char **argv, char *err, size_t errlen);

/* Parses "durable" or "interval:MS" (1 <= MS <= 3,600,000). */
int am_config_parse_sync(const char *s, uint64_t *interval_ms);

/* Parses a size: digits with an optional k/K, m/M or g/G suffix (powers of 1024). */
int am_config_parse_size(const char *s, uint64_t max, uint64_t *out);

void am_config_usage(void);

#endif

/* main.c - the amesh binary: dispatches to a subcommand (commands.h). */
#include "commands.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: amesh COMMAND [options]\n\n"
               "commands:\n"
               "  node     run a node\n"
               "  call     invoke an actor and print its reply\n"
               "  cast     send a message to an actor without waiting for its reply\n"
               "  status   print a node's status\n"
               "  members  print the cluster's members as a node sees them\n"
               "  ring     print the placement ring a node built from its view\n"
               "  actors   list the actors active on a node\n"
               "  leave    make a node leave the cluster and stop\n"
               "  keygen   write a new cluster key file\n"
               "  bench    measure a node's throughput and latency\n\n"
               "`amesh COMMAND --help` describes each.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return AM_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "node") == 0)
        return am_cmd_node(argc - 1, argv + 1);
    if (strcmp(cmd, "call") == 0 || strcmp(cmd, "cast") == 0)
        return am_cmd_call(argc - 1, argv + 1);
    if (strcmp(cmd, "status") == 0)
        return am_cmd_status(argc - 1, argv + 1);
    if (strcmp(cmd, "members") == 0)
        return am_cmd_members(argc - 1, argv + 1);
    if (strcmp(cmd, "ring") == 0)
        return am_cmd_ring(argc - 1, argv + 1);
    if (strcmp(cmd, "actors") == 0)
        return am_cmd_actors(argc - 1, argv + 1);
    if (strcmp(cmd, "leave") == 0)
        return am_cmd_leave(argc - 1, argv + 1);
    if (strcmp(cmd, "keygen") == 0)
        return am_cmd_keygen(argc - 1, argv + 1);
    if (strcmp(cmd, "bench") == 0)
        return am_cmd_bench(argc - 1, argv + 1);
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "amesh: unknown command '%s'\n", cmd);
    usage(stderr);
    return AM_EXIT_USAGE;
}

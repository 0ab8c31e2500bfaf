/* commands.h - the subcommands of the amesh binary.
 *
 * Each takes the arguments after "amesh" (argv[0] is the subcommand name) and
 * returns the process exit status:
 *   0  success
 *   1  the node answered with a non-retryable error
 *   2  bad usage (unknown flag, missing argument)
 *   69 the node could not be reached (EX_UNAVAILABLE)
 *   75 a retryable error: busy, overloaded, shutting down, timeout (EX_TEMPFAIL)
 */
#ifndef AM_COMMANDS_H
#define AM_COMMANDS_H

#define AM_EXIT_OK 0
#define AM_EXIT_ERROR 1
#define AM_EXIT_USAGE 2
#define AM_EXIT_UNAVAILABLE 69
#define AM_EXIT_TEMPFAIL 75

int am_cmd_node(int argc, char **argv);   /* node.c */
int am_cmd_call(int argc, char **argv);   /* cli_client.c: "call" and "cast" */
int am_cmd_status(int argc, char **argv); /* cli_client.c */
int am_cmd_members(int argc, char **argv); /* cli_client.c */
int am_cmd_leave(int argc, char **argv);  /* cli_client.c */
int am_cmd_ring(int argc, char **argv);   /* cli_client.c */
int am_cmd_actors(int argc, char **argv); /* cli_client.c */
int am_cmd_keygen(int argc, char **argv); /* cli_client.c */
int am_cmd_bench(int argc, char **argv);  /* bench.c */

#endif

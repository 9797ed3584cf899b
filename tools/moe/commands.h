/* commands.h - the subcommands of the `moe` command line, one file each
 * (tools/moe/cmd_<name>.c). Each takes argc/argv after the subcommand name
 * (argv[0] is the subcommand) and returns the process exit code. */
#ifndef MOE_COMMANDS_H
#define MOE_COMMANDS_H

int cmd_logits(int argc, char **argv);
int cmd_route(int argc, char **argv);
int cmd_ppl(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_mkckpt(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_eplb(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_serve(int argc, char **argv);

#endif

/*
 * options.h — the one option parser of the sdcoreml commands (convert, run, inspect).
 *
 * A command is a table of options; sdc_cli_parse() walks argv once, the way Python's argparse
 * does for the spellings torch2coreml users type: "--opt value" and "--opt=value", unique
 * prefixes of long options (when the command allows them, as argparse's allow_abbrev), lists
 * ("--convert-controlnet A B"), at most one positional, and -h/--help, which prints the help
 * and stops as soon as it is met. Every usage error goes through sdc_cli_usage_error().
 */
#ifndef SDCOREML_CLI_OPTIONS_H
#define SDCOREML_CLI_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum { SDC_CLI_EXIT_USAGE = 2 };

/* What sdc_cli_parse() returns when the command should go on; otherwise it returns the exit
   status (0 after printing the help, SDC_CLI_EXIT_USAGE after a usage error). */
enum { SDC_CLI_CONTINUE = -1 };

typedef struct sdc_cli_command sdc_cli_command;

/* How an option stores what it is given, at `offset` in the command's state struct. */
typedef enum sdc_cli_store {
    SDC_CLI_TRUE,   /* a flag: sets a bool */
    SDC_CLI_HELP,   /* a flag: prints the command's help; parsing stops with exit status 0 */
    SDC_CLI_STRING, /* one value: sets a const char * (the last one given wins) */
    SDC_CLI_INT,    /* one value: an int from int_min to int_max */
    SDC_CLI_CHOICE, /* one value among `choices`: sets an int to its index */
    SDC_CLI_LIST,   /* the following words up to the next option: appended to an sdc_cli_list */
    SDC_CLI_CALL,   /* one value handed to `call`, for checks only the command knows */
} sdc_cli_store;

/* The values of a SDC_CLI_LIST option; `given` even when the option came with no value. */
typedef struct sdc_cli_list {
    const char **items;
    int n, capacity;
    bool given;
} sdc_cli_list;

typedef struct sdc_cli_option {
    const char *name;    /* the spelling messages use: "--model-version", "-o" */
    const char *alias;   /* another spelling, or NULL: "-h" for "--help", "--output" for "-o" */
    sdc_cli_store store;
    size_t offset;       /* of the stored field in the state struct; unused by SDC_CLI_HELP */
    const char *metavar; /* the value's name in the help, or NULL for a flag */
    const char *help;    /* one line, or several separated by '\n' */
    int int_min, int_max;                 /* SDC_CLI_INT */
    const char *const *choices;           /* SDC_CLI_CHOICE, NULL-terminated */
    /* SDC_CLI_CALL: returns 0, or the exit status after printing a usage error */
    int (*call)(const sdc_cli_command *cmd, void *state, const char *value);
} sdc_cli_option;

struct sdc_cli_command {
    const char *name; /* "run", "inspect"; NULL for the default command (convert) */
    const sdc_cli_option *options;
    size_t n_options;
    bool allow_abbrev;          /* unique prefixes of long options are accepted */
    const char *positional;     /* the one positional's name ("PACKAGE"), or NULL for none */
    size_t positional_offset;   /* its const char * in the state struct */
    const char *help_head;      /* --help: the text before the option list */
    const char *help_tail;      /* --help: the text after it, or NULL */
    int help_column;            /* width of the option column of the help */
};

/* Parses argv[0..argc) (the words after the command's name) into `state`. */
int sdc_cli_parse(const sdc_cli_command *cmd, int argc, char **argv, void *state);

/* A whole decimal number from lo to hi ("8", "+8", " 8"; not "", "8x"), as argparse's int. */
bool sdc_cli_parse_int(const char *s, int lo, int hi, int *out);

/* The command's --help: head, one line per option, tail. */
void sdc_cli_print_help(const sdc_cli_command *cmd, FILE *f);

/* "sdcoreml[ NAME]: <message>" and a pointer to the command's --help on stderr; returns
   SDC_CLI_EXIT_USAGE. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
int sdc_cli_usage_error(const sdc_cli_command *cmd, const char *fmt, ...);

#endif

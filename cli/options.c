/*
 * options.c — the option parser shared by every sdcoreml command; see options.h.
 */
#include "options.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Every command has -h/--help, as argparse's add_help: a command cannot forget it, and it is
   listed first in every help. */
static const sdc_cli_option HELP_OPTION = {
    .name = "--help", .alias = "-h", .store = SDC_CLI_HELP, .help = "show this help and exit"};

int sdc_cli_usage_error(const sdc_cli_command *cmd, const char *fmt, ...) {
    const char *sep = cmd->name ? " " : "", *name = cmd->name ? cmd->name : "";
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sdcoreml%s%s: ", sep, name);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry 'sdcoreml%s%s --help'.\n", sep, name);
    va_end(ap);
    return SDC_CLI_EXIT_USAGE;
}

/* ---------------------------------------------------------------- help */

static bool is_short(const char *spelling) { return spelling[0] == '-' && spelling[1] != '-'; }

/* "-h, --help", "-o, --output DIR", "--convert-controlnet ID ...": the short spelling first. */
static void option_synopsis(const sdc_cli_option *o, char *buf, size_t size) {
    const char *first = o->name, *second = o->alias;
    if (second && is_short(second) && !is_short(first)) {
        first = o->alias;
        second = o->name;
    }
    snprintf(buf, size, "%s%s%s%s%s%s", first, second ? ", " : "", second ? second : "", o->metavar ? " " : "",
             o->metavar ? o->metavar : "", o->store == SDC_CLI_LIST ? " ..." : "");
}

/* One option of the help; its text's further lines are indented under its first. */
static void print_option_help(const sdc_cli_command *cmd, const sdc_cli_option *o, FILE *f) {
    char left[128];
    option_synopsis(o, left, sizeof left);
    const char *line = o->help ? o->help : "";
    fprintf(f, "  %-*s ", cmd->help_column, left);
    for (;;) {
        const char *nl = strchr(line, '\n');
        int len = nl ? (int)(nl - line) : (int)strlen(line);
        fprintf(f, "%.*s\n", len, line);
        if (!nl) break;
        line = nl + 1;
        fprintf(f, "  %-*s ", cmd->help_column, "");
    }
}

void sdc_cli_print_help(const sdc_cli_command *cmd, FILE *f) {
    fputs(cmd->help_head, f);
    print_option_help(cmd, &HELP_OPTION, f);
    for (size_t i = 0; i < cmd->n_options; i++) print_option_help(cmd, &cmd->options[i], f);
    if (cmd->help_tail) fputs(cmd->help_tail, f);
}

/* ---------------------------------------------------------------- finding an option */

static const sdc_cli_option *option_at(const sdc_cli_command *cmd, size_t i) {
    return i < cmd->n_options ? &cmd->options[i] : &HELP_OPTION;
}

static bool spelled(const char *spelling, const char *arg, size_t len) {
    return spelling && strlen(spelling) == len && !strncmp(spelling, arg, len);
}

/* A long spelling that `arg` (len > 2 characters, so never a bare "-" or "--") begins. */
static bool abbreviates(const char *spelling, const char *arg, size_t len) {
    return spelling && len > 2 && !is_short(spelling) && strlen(spelling) > len && !strncmp(spelling, arg, len);
}

/* The option spelled arg[0..len), exactly or, when the command allows it, by a unique prefix
   (argparse's allow_abbrev). NULL, and *ambiguous when two options share the prefix. */
static const sdc_cli_option *find_option(const sdc_cli_command *cmd, const char *arg, size_t len, bool *ambiguous) {
    *ambiguous = false;
    for (size_t i = 0; i <= cmd->n_options; i++) {
        const sdc_cli_option *o = option_at(cmd, i);
        if (spelled(o->name, arg, len) || spelled(o->alias, arg, len)) return o;
    }
    if (!cmd->allow_abbrev) return NULL;
    const sdc_cli_option *found = NULL;
    for (size_t i = 0; i <= cmd->n_options; i++) {
        const sdc_cli_option *o = option_at(cmd, i);
        if (!abbreviates(o->name, arg, len) && !abbreviates(o->alias, arg, len)) continue;
        if (found && found != o) *ambiguous = true;
        found = o;
    }
    return *ambiguous ? NULL : found;
}

/* ---------------------------------------------------------------- storing values */

static void *field(void *state, const sdc_cli_option *o) { return (char *)state + o->offset; }

bool sdc_cli_parse_int(const char *s, int lo, int hi, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

static int store_choice(const sdc_cli_command *cmd, const sdc_cli_option *o, void *state, const char *value) {
    char list[256] = "";
    for (int k = 0; o->choices[k]; k++) {
        if (!strcmp(o->choices[k], value)) {
            *(int *)field(state, o) = k;
            return 0;
        }
        size_t n = strlen(list);
        snprintf(list + n, sizeof list - n, "%s%s", k ? ", " : "", o->choices[k]);
    }
    return sdc_cli_usage_error(cmd, "%s: invalid choice '%s' (%s)", o->name, value, list);
}

static int store_value(const sdc_cli_command *cmd, const sdc_cli_option *o, void *state, const char *value) {
    switch (o->store) {
    case SDC_CLI_STRING:
        *(const char **)field(state, o) = value;
        return 0;
    case SDC_CLI_INT:
        if (sdc_cli_parse_int(value, o->int_min, o->int_max, field(state, o))) return 0;
        return sdc_cli_usage_error(cmd, "%s: invalid value '%s' (an integer from %d to %d)", o->name, value, o->int_min,
                                   o->int_max);
    case SDC_CLI_CHOICE:
        return store_choice(cmd, o, state, value);
    case SDC_CLI_CALL:
        return o->call(cmd, state, value);
    default:
        return 0;
    }
}

static int append_to_list(const sdc_cli_command *cmd, const sdc_cli_option *o, sdc_cli_list *list, const char *value) {
    if (list->n == list->capacity)
        return sdc_cli_usage_error(cmd, "%s takes at most %d values", o->name, list->capacity);
    list->items[list->n++] = value;
    return 0;
}

/* argparse's nargs="*": the value after '=' if any, then every following word up to the next
   one that starts with '-'. *i moves past the words taken. */
static int take_list(const sdc_cli_command *cmd, const sdc_cli_option *o, void *state, const char *eq_value, int argc,
                     char **argv, int *i) {
    sdc_cli_list *list = field(state, o);
    list->given = true;
    int rc = eq_value ? append_to_list(cmd, o, list, eq_value) : 0;
    while (!rc && *i + 1 < argc && argv[*i + 1][0] != '-') rc = append_to_list(cmd, o, list, argv[++*i]);
    return rc;
}

/* ---------------------------------------------------------------- the parser */

/* One word that starts with '-', and the values it takes. Returns SDC_CLI_CONTINUE, or the exit
   status: 0 once the help is printed, SDC_CLI_EXIT_USAGE after a usage error. */
static int take_option(const sdc_cli_command *cmd, void *state, int argc, char **argv, int *i) {
    const char *arg = argv[*i];
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    bool ambiguous;
    const sdc_cli_option *o = find_option(cmd, arg, len, &ambiguous);
    if (!o) return sdc_cli_usage_error(cmd, ambiguous ? "ambiguous option '%s'" : "unknown option '%s'", arg);
    if ((o->store == SDC_CLI_HELP || o->store == SDC_CLI_TRUE) && eq)
        return sdc_cli_usage_error(cmd, "option '%s' takes no value", o->name);
    int rc;
    if (o->store == SDC_CLI_HELP) {
        /* as argparse: the help is printed when met, whatever follows */
        sdc_cli_print_help(cmd, stdout);
        return EXIT_SUCCESS;
    } else if (o->store == SDC_CLI_TRUE) {
        *(bool *)field(state, o) = true;
        rc = 0;
    } else if (o->store == SDC_CLI_LIST) {
        rc = take_list(cmd, o, state, eq ? eq + 1 : NULL, argc, argv, i);
    } else {
        /* the next word is the value even when it starts with '-' */
        const char *value = eq ? eq + 1 : (*i + 1 < argc ? argv[++*i] : NULL);
        rc = value ? store_value(cmd, o, state, value) : sdc_cli_usage_error(cmd, "option '%s' needs a value", o->name);
    }
    return rc ? rc : SDC_CLI_CONTINUE;
}

static int take_positional(const sdc_cli_command *cmd, void *state, const char *arg, int *n_positional) {
    if (!cmd->positional || *n_positional == 1) return sdc_cli_usage_error(cmd, "unexpected argument '%s'", arg);
    *(const char **)((char *)state + cmd->positional_offset) = arg;
    (*n_positional)++;
    return SDC_CLI_CONTINUE;
}

int sdc_cli_parse(const sdc_cli_command *cmd, int argc, char **argv, void *state) {
    int n_positional = 0;
    for (int i = 0; i < argc; i++) {
        /* Any word starting with '-' is an option, a lone "-" included (refused as unknown,
           never taken as a file name). */
        int rc = argv[i][0] == '-' ? take_option(cmd, state, argc, argv, &i)
                                   : take_positional(cmd, state, argv[i], &n_positional);
        if (rc != SDC_CLI_CONTINUE) return rc;
    }
    if (cmd->positional && !n_positional) return sdc_cli_usage_error(cmd, "missing %s", cmd->positional);
    return SDC_CLI_CONTINUE;
}

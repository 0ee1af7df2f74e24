/*
 * check.h — the whole unit-test harness: CHECK records a failure with file:line and goes on,
 * CHECK_DONE prints one summary line and gives main's exit status (0 when all passed).
 */
#ifndef SDC_CHECK_H
#define SDC_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_passed, check_failed;

/* Returns the condition, so a test can skip what depends on it. */
#define CHECK(cond) check_record(!!(cond), __FILE__, __LINE__, #cond)
/* CHECK with a message printed on failure (e.g. the error text). */
#define CHECK_MSG(cond, ...)                                                                    \
    (check_record(!!(cond), __FILE__, __LINE__, #cond) ? 1 : (fprintf(stderr, "    "),          \
                                                              fprintf(stderr, __VA_ARGS__),     \
                                                              fprintf(stderr, "\n"), 0))

static inline int check_record(int ok, const char *file, int line, const char *expr) {
    if (ok) {
        check_passed++;
    } else {
        check_failed++;
        fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, expr);
    }
    return ok;
}

/* Prints "test_x: 12 passed, 0 failed" and returns the exit status for main. */
static inline int check_done(const char *name) {
    printf("%s: %d passed, %d failed\n", name, check_passed, check_failed);
    return check_failed ? 1 : 0;
}
#define CHECK_DONE(name) check_done(name)

#endif

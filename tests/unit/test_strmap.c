/*
 * test_strmap.c — the string table: put, get, and set replacing a value in place (merges.txt
 * lists a pair again: the later rank wins) without adding a second entry, across growth.
 */
#include "check.h"
#include "strmap.h"

#include <stdio.h>

int main(void) {
    static char names[2000][8];
    sdc_strmap m = {0};
    for (int i = 0; i < 2000; i++) {
        snprintf(names[i], sizeof names[i], "k%d", i);
        CHECK(sdc_strmap_put(&m, names[i], i));
    }
    CHECK(sdc_strmap_get(&m, "k1999") == 1999);
    CHECK(sdc_strmap_get(&m, "absent") == -1);
    for (int i = 0; i < 2000; i += 2) CHECK(sdc_strmap_set(&m, names[i], -i - 10));
    CHECK(m.count == 2000);
    CHECK(sdc_strmap_get(&m, "k0") == -10);
    CHECK(sdc_strmap_get(&m, "k1998") == -2008);
    CHECK(sdc_strmap_get(&m, "k1997") == 1997);
    CHECK(sdc_strmap_set(&m, "new", 7));
    CHECK(m.count == 2001 && sdc_strmap_get(&m, "new") == 7);
    sdc_strmap_clear(&m);
    CHECK(m.count == 0 && sdc_strmap_get(&m, "k0") == -1);
    return CHECK_DONE("test_strmap");
}

/*
 * context.c — what every file of the convert wing asks of the job: where log lines go and
 * which dtype the graphs compute in. Kept apart so check.c and emit.c need not call each
 * other for it.
 */
#include "convert/convert.h"

void sdc_conv_log(const sdc_conv_ctx *c, sdc_log_level level, const char *fmt, ...) {
    if (!c->job->log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    c->job->log(c->job->user, level, line);
}

sdc_dtype sdc_conv_compute_dtype(const sdc_conv_ctx *c) {
    return c->job->precision == SDC_PRECISION_FLOAT32 ? SDC_DT_F32 : SDC_DT_F16;
}

/*
 * context.c — what every file of the convert wing asks of the job: where log lines go, which
 * dtype the graphs compute in, the SDXL rule, the reference UNet options. Kept apart so that
 * check.c and emit.c need not call each other for them.
 */
#include "convert/convert.h"

void sdc_conv_log(const sdc_conv_ctx *c, sdc_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    sdc_logv(c->job->log, c->job->user, level, fmt, ap);
    va_end(ap);
}

sdc_dtype sdc_conv_compute_dtype(const sdc_conv_ctx *c) {
    return c->job->precision == SDC_PRECISION_FLOAT32 ? SDC_DT_F32 : SDC_DT_F16;
}

sdc_status sdc_conv_check_xl(const sdc_conv_ctx *c, const char *why, const char *not_xl_detail) {
    bool xl = sdc_pipeline_is_xl(c->src);
    if (xl && !c->job->xl_version)
        return sdc_fail(c->err, SDC_E_ARG, "%s is an SDXL pipeline; add --xl-version%s", c->job->model_version, why);
    if (!xl && c->job->xl_version)
        return sdc_fail(c->err, SDC_E_ARG, "--xl-version given, but %s is not an SDXL pipeline%s",
                        c->job->model_version, not_xl_detail);
    return SDC_OK;
}

void sdc_conv_unet_reference(sdc_unet_options *opt) {
    opt->compute = SDC_DT_F32;
    opt->attention = SDC_ATTN_ORIGINAL;
}

/*
 * config_tables.h — the keys of every config class the builders read, one table per class
 * (config_tables.c), checked by sdc_config_check before a builder reads a value.
 */
#ifndef SDC_CONFIG_TABLES_H
#define SDC_CONFIG_TABLES_H

#include "source/config_keys.h"

/* The tables to look a key up in, first match wins, for each config file the builders read. */
typedef struct sdc_config_class {
    const sdc_config_table *const *tables;
    size_t n;
} sdc_config_class;

extern const sdc_config_class sdc_unet_config_class;        /* UNet2DConditionModel */
extern const sdc_config_class sdc_controlnet_config_class;  /* ControlNetModel */
extern const sdc_config_class sdc_vae_config_class;         /* AutoencoderKL */
extern const sdc_config_class sdc_clip_text_config_class;   /* CLIPTextConfig */
extern const sdc_config_class sdc_clip_config_class;        /* CLIPConfig (safety checker), top level */
extern const sdc_config_class sdc_clip_vision_config_class; /* its vision_config */

/* sdc_config_check of obj against one class. */
sdc_status sdc_config_check_class(const sdc_component *c, const json_t *obj, const char *where,
                                  const sdc_config_class *cls, sdc_config_notes *notes, sdc_err *err);

#endif

/* routeplot.h - pictures of the routing statistics, written by hand as SVG text.
 *
 *   load heat map    rows: the MoE layers (MTP block last), columns: experts laid out
 *                    by group with the group boundaries drawn; colour: load / mean load
 *                    on a log scale (blue under, white even, red over; dark grey: never used)
 *   co-activation    E x E: how often experts a and b were chosen for the same token at
 *                    one layer (diagonal left out), white -> dark blue, square-root scale
 */
#ifndef MOE_ROUTEPLOT_H
#define MOE_ROUTEPLOT_H

#include "config.h"
#include "error.h"
#include "routestats.h"

int routeplot_load_svg(const routestats *rs, const moe_config *cfg, const char *title, const char *path, moe_error *err);
int routeplot_coact_svg(const routestats *rs, const moe_config *cfg, const char *title, const char *path,
                        moe_error *err);

#endif

/* routeplot.c - the load heat map and the co-activation matrix as SVG (see routeplot.h).
 *
 * Both pictures are plain SVG 1.1 text: rects for cells, lines for group
 * boundaries, a gradient for the colour legend. Nothing depends on fonts beyond
 * a generic sans-serif.
 */
#include "routeplot.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------ helpers */

static int clampi(int x, int lo, int hi) { return x < lo ? lo : x > hi ? hi : x; }

/* XML-escaped text. */
static void put_text(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '&') fputs("&amp;", f);
        else if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '"') fputs("&quot;", f);
        else fputc(*s, f);
    }
}

/* Diverging colour of r = load / mean load: log2 r in [-2, 2] -> blue .. white .. red. */
static void load_colour(double r, char out[8]) {
    static const double blue[3] = {33, 102, 172}, red[3] = {178, 24, 43};
    double t = log2(r) / 2;
    if (t < -1) t = -1;
    if (t > 1) t = 1;
    const double *end = t < 0 ? blue : red;
    double a = fabs(t);
    int rgb[3];
    for (int i = 0; i < 3; i++) rgb[i] = (int)lround(255 + (end[i] - 255) * a);
    snprintf(out, 8, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

/* Sequential colour, t in [0, 1]: white -> dark blue. */
static void seq_colour(double t, char out[8]) {
    static const double dark[3] = {8, 48, 107};
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    int rgb[3];
    for (int i = 0; i < 3; i++) rgb[i] = (int)lround(255 + (dark[i] - 255) * t);
    snprintf(out, 8, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

static FILE *svg_open(const char *path, int W, int H, moe_error *err) {
    FILE *f = fopen(path, "w");
    if (!f) { moe_error_set(err, "%s: cannot write: %s", path, strerror(errno)); return NULL; }
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
               "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H, W, H, W, H);
    return f;
}

static int svg_close(FILE *f, const char *path, moe_error *err) {
    fprintf(f, "</svg>\n");
    int bad = ferror(f);
    if (fclose(f) || bad) return moe_error_set(err, "%s: write failed: %s", path, strerror(errno));
    return MOE_OK;
}

/* Column labels and boundaries of the expert groups above/through a block of cells. */
static void draw_groups_x(FILE *f, int G, int gs, int x0, int y0, int cw, int height, int label_y) {
    for (int g = 0; g < G; g++) {
        int xa = x0 + g * gs * cw, w = gs * cw;
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"11\">%s%d</text>\n", xa + w / 2, label_y,
                w >= 60 ? "group " : "g", g);
        if (g > 0)
            fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\" stroke-width=\"1.5\"/>\n", xa,
                    y0 - 4, xa, y0 + height);
    }
}

/* ------------------------------------------------------------------ load heat map */

int routeplot_load_svg(const routestats *rs, const moe_config *cfg, const char *title, const char *path, moe_error *err) {
    int E = rs->E, G = rs->G, gs = E / G, rows = 0;
    for (int l = 0; l < rs->Lt; l++) rows += rs->is_moe[l];
    int cw = clampi(900 / E, 2, 14), ch = clampi(360 / (rows ? rows : 1), 14, 36);
    int left = 120, top = 100, right = 130, bottom = 140;
    int plot_w = E * cw, plot_h = rows * ch;
    int W = left + plot_w + right, H = top + plot_h + bottom;
    if (W < 1000) W = 1000;
    FILE *f = svg_open(path, W, H, err);
    if (!f) return MOE_FAIL;
    /* titles */
    fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"16\" font-weight=\"bold\">Expert load per layer: ", 12);
    put_text(f, title);
    fprintf(f, "</text>\n<text x=\"12\" y=\"44\" fill=\"#333\">Each cell: how many tokens that layer's router sent to "
               "that expert, divided by the mean (tokens x %d / %d experts).</text>\n", rs->K, E);
    fprintf(f, "<text x=\"12\" y=\"60\" fill=\"#333\">Blue = under-used, white = even share, red = over-used, dark grey "
               "= never chosen. ");
    if (G > 1)
        fprintf(f, "Black lines separate the %d expert groups%s.</text>\n", G,
                cfg->topk_method == TOPK_GREEDY ? " (not used by this model's greedy routing)" : "");
    else
        fprintf(f, "This model does not group its experts.</text>\n");
    /* cells */
    int row = 0;
    for (int l = 0; l < rs->Lt; l++) {
        if (!rs->is_moe[l]) continue;
        int y = top + row * ch;
        const int64_t *c = rs->counts + (size_t)l * E;
        double mean = (double)rs->tokens[l] * rs->K / E;
        for (int e = 0; e < E; e++) {
            char col[8];
            if (c[e] == 0) strcpy(col, "#404040");
            else load_colour(c[e] / mean, col);
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"><title>layer %d expert %d: %lld "
                       "tokens (%.2fx mean)</title></rect>\n",
                    left + e * cw, y, cw, ch, col, l, e, (long long)c[e], mean > 0 ? c[e] / mean : 0);
        }
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s %d</text>\n", left - 8, y + ch / 2 + 4,
                l >= rs->L ? "MTP layer" : "layer", l);
        routestats_layer m;
        routestats_layer_metrics(rs, l, &m);
        fprintf(f, "<text x=\"%d\" y=\"%d\">%.2f</text>\n", left + plot_w + 12, y + ch / 2 + 4, m.maxvio);
        row++;
    }
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"black\"/>\n", left, top, plot_w,
            plot_h);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">MaxVio</text>\n", left + plot_w + 12, top - 8);
    if (G > 1) draw_groups_x(f, G, gs, left, top, cw, plot_h, top - 10);
    /* x axis: ticks at group starts (or every E/8) */
    int step = G > 1 ? gs : (E >= 8 ? E / 8 : 1);
    for (int e = 0; e <= E; e += step) {
        int x = left + e * cw;
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", x, top + plot_h, x,
                top + plot_h + 5);
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"11\">%d</text>\n", x, top + plot_h + 18,
                e);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">expert id (%d experts%s)</text>\n", left + plot_w / 2,
            top + plot_h + 38, E, G > 1 ? ", laid out by group" : "");
    fprintf(f, "<text transform=\"translate(20,%d) rotate(-90)\" text-anchor=\"middle\">MoE layer</text>\n",
            top + plot_h / 2);
    /* legend: log2(load/mean) from -2 to 2 */
    int lx = left, ly = top + plot_h + 62, lw = 300;
    fprintf(f, "<defs><linearGradient id=\"load\" x1=\"0\" x2=\"1\" y1=\"0\" y2=\"0\">\n");
    for (int i = 0; i <= 8; i++) {
        char col[8];
        load_colour(pow(2, -2 + i * 0.5), col);
        fprintf(f, "<stop offset=\"%.3f\" stop-color=\"%s\"/>\n", i / 8.0, col);
    }
    fprintf(f, "</linearGradient></defs>\n");
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">colour = load / mean load (log scale)</text>\n", lx, ly - 6);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"16\" fill=\"url(#load)\" stroke=\"black\"/>\n", lx, ly, lw);
    static const char *tick[5] = {"1/4 or less", "1/2", "1 (even)", "2", "4 or more"};
    for (int i = 0; i < 5; i++) {
        int x = lx + i * lw / 4;
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", x, ly + 16, x, ly + 21);
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"11\">%s</text>\n", x, ly + 33, tick[i]);
    }
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"16\" height=\"16\" fill=\"#404040\" stroke=\"black\"/>\n", lx + lw + 40, ly);
    fprintf(f, "<text x=\"%d\" y=\"%d\">never chosen (0 tokens)</text>\n", lx + lw + 62, ly + 13);
    fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"#333\">MaxVio = max load / mean load - 1 (0 = perfectly balanced)</text>\n",
            lx + lw + 40, ly + 33);
    return svg_close(f, path, err);
}

/* ------------------------------------------------------------------ co-activation */

int routeplot_coact_svg(const routestats *rs, const moe_config *cfg, const char *title, const char *path,
                        moe_error *err) {
    if (!rs->coact) return moe_error_set(err, "%s: no co-activation layer was chosen", path);
    int E = rs->E, G = rs->G, gs = E / G, L = rs->coact_layer;
    int cs = clampi(640 / E, 2, 16);
    int left = 90, top = 110, right = 170, bottom = 80;
    int side = E * cs, W = left + side + right, H = top + side + bottom;
    if (W < 1080) W = 1080;
    int64_t mx = 0;
    for (int a = 0; a < E; a++)
        for (int b = 0; b < E; b++)
            if (a != b && rs->coact[(size_t)a * E + b] > mx) mx = rs->coact[(size_t)a * E + b];
    FILE *f = svg_open(path, W, H, err);
    if (!f) return MOE_FAIL;
    fprintf(f, "<text x=\"12\" y=\"24\" font-size=\"16\" font-weight=\"bold\">Co-activation at %s %d: ",
            L >= rs->L ? "MTP layer" : "layer", L);
    put_text(f, title);
    fprintf(f, "</text>\n<text x=\"12\" y=\"44\" fill=\"#333\">Cell (a, b): number of tokens (of %lld) for which the "
               "router chose both expert a and expert b (top-%d). Symmetric; the diagonal is left out.</text>\n",
            (long long)rs->tokens[L], rs->K);
    fprintf(f, "<text x=\"12\" y=\"60\" fill=\"#333\">Darker = more often together (square-root scale).%s</text>\n",
            G > 1 ? " Black lines separate the expert groups." : "");
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"white\" stroke=\"black\"/>\n", left, top, side,
            side);
    for (int a = 0; a < E; a++)
        for (int b = 0; b < E; b++) {
            int64_t v = rs->coact[(size_t)a * E + b];
            if (a == b) {
                fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#e0e0e0\"/>\n", left + b * cs,
                        top + a * cs, cs, cs);
                continue;
            }
            if (!v) continue;
            char col[8];
            seq_colour(sqrt((double)v / (double)mx), col);
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"><title>experts %d and %d: %lld "
                       "tokens</title></rect>\n", left + b * cs, top + a * cs, cs, cs, col, a, b, (long long)v);
        }
    if (G > 1) {
        draw_groups_x(f, G, gs, left, top, cs, side, top - 10);
        for (int g = 1; g < G; g++)
            fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\" stroke-width=\"1.5\"/>\n", left - 4,
                    top + g * gs * cs, left + side, top + g * gs * cs);
    }
    int step = G > 1 ? gs : (E >= 8 ? E / 8 : 1);
    for (int e = 0; e <= E; e += step) {
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"11\">%d</text>\n", left + e * cs,
                top + side + 16, e);
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" font-size=\"11\">%d</text>\n", left - 8, top + e * cs + 4,
                e);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">expert b</text>\n", left + side / 2, top + side + 36);
    fprintf(f, "<text transform=\"translate(30,%d) rotate(-90)\" text-anchor=\"middle\">expert a</text>\n",
            top + side / 2);
    /* legend: vertical bar, sqrt scale */
    int lx = left + side + 40, ly = top, lh = 200;
    fprintf(f, "<defs><linearGradient id=\"co\" x1=\"0\" x2=\"0\" y1=\"1\" y2=\"0\">\n");
    for (int i = 0; i <= 4; i++) {
        char col[8];
        seq_colour(i / 4.0, col);
        fprintf(f, "<stop offset=\"%.2f\" stop-color=\"%s\"/>\n", i / 4.0, col);
    }
    fprintf(f, "</linearGradient></defs>\n");
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">tokens together</text>\n", lx - 10, ly - 10);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"18\" height=\"%d\" fill=\"url(#co)\" stroke=\"black\"/>\n", lx, ly, lh);
    for (int i = 0; i <= 4; i++) {
        double frac = i / 4.0;                      /* position on the bar = sqrt(v / max) */
        double v = frac * frac * (double)mx;
        int y = ly + lh - (int)lround(frac * lh);
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", lx + 18, y, lx + 23, y);
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\">%.0f</text>\n", lx + 27, y + 4, v);
    }
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"18\" height=\"18\" fill=\"#e0e0e0\" stroke=\"black\"/>\n", lx, ly + lh + 20);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\">diagonal</text>\n", lx + 24, ly + lh + 33);
    (void)cfg;
    return svg_close(f, path, err);
}

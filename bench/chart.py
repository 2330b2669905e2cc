"""The SVG chart of the small-GET workload: req/s and p99 per target and
configuration. Standard library only."""

import math

from records import COLORS, LABELS, pick, stat, targets_in


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chart(records, title_suffix=""):
    """Two grouped bar panels (req/s, p99 µs) per (protocol, concurrency),
    one bar per target, with min–max whiskers."""
    recs = pick(records, workload="small_get")
    targets = targets_in(recs)
    configs = sorted({(r["proto"], r["c"]) for r in recs}, key=lambda x: (x[0], x[1]))
    if not recs:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    width, panel_h, top, left = 960, 260, 60, 80
    group_w = (width - left - 20) / len(configs)
    bar_w = min(28, (group_w - 20) / len(targets))
    height = top + 2 * (panel_h + 70)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="16">'
           f'{esc("Small GET through each target (median, whiskers min–max)" + title_suffix)}</text>']
    # Legend.
    x = left
    for t in targets:
        out.append(f'<rect x="{x}" y="34" width="12" height="12" fill="{COLORS[t]}"/>')
        out.append(f'<text x="{x + 16}" y="45">{esc(LABELS[t])}</text>')
        x += 24 + 7 * len(LABELS[t])

    def nice_max(v):
        if v <= 0:
            return 1
        mag = 10 ** (len(str(int(v))) - 1)
        for step in (1, 2, 2.5, 5, 10):
            if v <= step * mag:
                return step * mag
        return 10 * mag

    for panel, (field, label, log_scale) in enumerate(
        (("rps", "requests/s", False), ("p99_us", "p99 latency, µs (log scale)", True))
    ):
        y0 = top + panel * (panel_h + 70) + 10
        stats = {(t, cfg): stat(recs, field, target=t, proto=cfg[0], c=cfg[1])
                 for t in targets for cfg in configs}
        values = [v for s in stats.values() if s for v in s.values if v > 0]
        if log_scale:
            lo_exp = math.floor(math.log10(min(values, default=1)))
            hi_exp = math.ceil(math.log10(max(values, default=10)))
            hi_exp = max(hi_exp, lo_exp + 1)
            ticks = [10 ** e for e in range(lo_exp, hi_exp + 1)]

            def scale(v, lo_exp=lo_exp, hi_exp=hi_exp):
                v = max(v, 10 ** lo_exp)
                return (math.log10(v) - lo_exp) / (hi_exp - lo_exp)
        else:
            vmax = nice_max(max(values, default=1))
            ticks = [vmax * i / 5 for i in range(6)]

            def scale(v, vmax=vmax):
                return v / vmax
        out.append(f'<text x="16" y="{y0 + panel_h / 2}" transform="rotate(-90 16 {y0 + panel_h / 2})" '
                   f'text-anchor="middle">{esc(label)}</text>')
        for v in ticks:
            y = y0 + panel_h - panel_h * scale(v)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
        for g, cfg in enumerate(configs):
            gx = left + g * group_w + (group_w - bar_w * len(targets)) / 2
            for k, t in enumerate(targets):
                s = stats[(t, cfg)]
                if not s:
                    continue
                bx = gx + k * bar_w
                h = panel_h * scale(s.med)
                out.append(f'<rect x="{bx:.1f}" y="{y0 + panel_h - h:.1f}" width="{bar_w - 2:.1f}" '
                           f'height="{h:.1f}" fill="{COLORS[t]}"><title>{esc(LABELS[t])}: '
                           f'{s.med:,.0f}</title></rect>')
                lo = y0 + panel_h - panel_h * scale(min(s.values))
                hi = y0 + panel_h - panel_h * scale(max(s.values))
                cx = bx + (bar_w - 2) / 2
                out.append(f'<line x1="{cx:.1f}" y1="{lo:.1f}" x2="{cx:.1f}" y2="{hi:.1f}" stroke="black"/>')
                text = f"{s.med / 1000:.1f}k" if s.med >= 1000 else f"{s.med:.0f}"
                out.append(f'<text x="{cx:.1f}" y="{min(y0 + panel_h - h, hi) - 3:.1f}" '
                           f'text-anchor="middle" font-size="9">{text}</text>')
            out.append(f'<text x="{left + g * group_w + group_w / 2:.1f}" y="{y0 + panel_h + 18}" '
                       f'text-anchor="middle">{esc(("HTTP/1.1" if cfg[0] == "h1" else "HTTP/2") + f" -c {cfg[1]}")}</text>')
        out.append(f'<line x1="{left}" y1="{y0 + panel_h}" x2="{width - 20}" y2="{y0 + panel_h}" stroke="black"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"

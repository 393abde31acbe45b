// Time-series charts on uPlot (vendored, see docs/console.md).
import { h } from "./ui.js";

export function chart(title, series, format = (v) => v) {
  const box = h("figure", { class: "chart" }, h("figcaption", {}, title));
  const points = series && series.points ? series.points : [];
  if (!points.length) {
    box.append(h("p", { class: "muted" }, "No samples yet."));
    return box;
  }
  const xs = points.map((p) => new Date(p.timestamp).getTime() / 1000);
  const ys = points.map((p) => p.value);
  const last = ys[ys.length - 1];
  box.append(h("p", { class: "muted" }, `Latest: ${format(last)}`));
  const plot = h("div", { role: "img", "aria-label": `${title} chart, latest ${format(last)}` });
  box.append(plot);
  requestAnimationFrame(() => {
    const width = Math.max(240, plot.clientWidth || 300);
    // eslint-disable-next-line no-undef
    new uPlot({ width, height: 160, legend: { show: false },
      axes: [{}, { values: (_, ticks) => ticks.map(format), size: 70 }],
      series: [{}, { label: title, stroke: "#0b5cad", width: 2, fill: "rgba(11,92,173,0.1)" }] }, [xs, ys], plot);
  });
  return box;
}

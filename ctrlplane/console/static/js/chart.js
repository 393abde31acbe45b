// Time-series charts on uPlot (vendored, see docs/console.md). A chart is made once and updated in
// place with each new answer, so a page that polls keeps its charts (and their size) as they grow.
import { h } from "./ui.js";

export function chart(title, format = (v) => v) {
  const latest = h("p", { class: "muted" }, "No samples yet.");
  const plotBox = h("div", { role: "img", "aria-label": `${title} chart, no samples yet` });
  const element = h("figure", { class: "chart", "data-points": "0" }, h("figcaption", {}, title), latest, plotBox);
  let plot = null;
  let data = null;
  let drawing = false;

  function draw() {
    drawing = false;
    if (!data) {
      if (plot) { plot.destroy(); plot = null; }
      return;
    }
    if (plot) { plot.setData(data); return; }
    const width = Math.max(240, plotBox.clientWidth || 300);
    // eslint-disable-next-line no-undef
    plot = new uPlot({ width, height: 160, legend: { show: false },
      axes: [{}, { values: (_, ticks) => ticks.map(format), size: 70 }],
      series: [{}, { label: title, stroke: "#0b5cad", width: 2, fill: "rgba(11,92,173,0.1)" }] }, data, plotBox);
  }

  // points: [{timestamp, value}], oldest first
  function update(points) {
    element.dataset.points = String(points.length);
    if (points.length) {
      const last = points[points.length - 1];
      element.dataset.latest = last.timestamp;
      latest.textContent = `Latest: ${format(last.value)}`;
      plotBox.setAttribute("aria-label", `${title} chart, ${points.length} points, latest ${format(last.value)}`);
      data = [points.map((p) => new Date(p.timestamp).getTime() / 1000), points.map((p) => p.value)];
    } else {
      delete element.dataset.latest;
      latest.textContent = "No samples yet.";
      plotBox.setAttribute("aria-label", `${title} chart, no samples yet`);
      data = null;
    }
    if (!drawing) { drawing = true; requestAnimationFrame(draw); }
  }

  return { element, update };
}

// One series' points, or the points of several series (e.g. one per status class) added up per timestamp.
export function pointsOf(series) {
  if (!series.length) return [];
  if (series.length === 1) return series[0].points;
  const sums = new Map();
  for (const s of series) for (const p of s.points) sums.set(p.timestamp, (sums.get(p.timestamp) || 0) + p.value);
  return [...sums.entries()].sort((a, b) => new Date(a[0]) - new Date(b[0])).map(([timestamp, value]) => ({ timestamp, value }));
}

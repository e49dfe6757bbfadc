// Charts: every <canvas data-chart="ID"> is drawn by Chart.js (package.json, served by the
// app from node_modules: no CDN) from the JSON the page put in <script id="ID"
// type="application/json"> (config/charts.py). Axes carry their titles with units; a bar
// or point shows its value and unit on hover. The figure's text fallback (an SVG or a
// table) is hidden once the chart is drawn.
(function () {
  "use strict";
  if (typeof Chart === "undefined") return;
  const palette = ["#0f6b5c", "#c77c0e", "#3b5bdb", "#9c36b5"];

  // "" is a day without data: a gap in the line, not a zero.
  function number(text) {
    return text === "" ? null : Number.parseFloat(text);
  }

  // Money (a currency code) to the cent; other quantities as measured, up to 4 places.
  function format(value, unit) {
    const money = /^[A-Z]{3}$/.test(unit);
    const digits = money ? { minimumFractionDigits: 2, maximumFractionDigits: 2 }
      : { maximumFractionDigits: 4 };
    return value.toLocaleString("en-US", digits) + " " + unit;
  }

  function draw(canvas) {
    const source = document.getElementById(canvas.dataset.chart);
    if (!source) return;
    const spec = JSON.parse(source.textContent);
    const twoScales = spec.series.some((series) => series.axis === "y1");
    const scales = {
      x: { title: { display: true, text: spec.axes.x } },
      y: { beginAtZero: true, title: { display: true, text: spec.axes.y } },
    };
    if (twoScales) {
      scales.y1 = {
        beginAtZero: true, position: "right", grid: { drawOnChartArea: false },
        title: { display: true, text: spec.axes.y1 },
      };
    }
    const chart = new Chart(canvas, {
      type: spec.kind,
      data: {
        labels: spec.labels,
        datasets: spec.series.map((series, index) => ({
          label: series.label + " (" + series.unit + ")",
          data: series.values.map(number),
          yAxisID: series.axis,
          unit: series.unit,
          backgroundColor: palette[index % palette.length],
          borderColor: palette[index % palette.length],
        })),
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        plugins: {
          legend: { display: spec.series.length > 1 },
          tooltip: {
            callbacks: {
              label: (item) => item.dataset.label.replace(/ \([^)]*\)$/, "") + ": "
                + format(item.parsed.y, item.dataset.unit),
            },
          },
        },
        scales: scales,
      },
    });
    const figure = canvas.closest("figure");
    if (figure) figure.classList.add("has-chart");
    return chart;
  }

  document.querySelectorAll("canvas[data-chart]").forEach(draw);
  // For tests and the console: how a hovered value reads.
  window.hashgridChartLabel = (value, unit) => format(value, unit);
})();

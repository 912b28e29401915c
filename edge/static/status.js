/*
 * The POP status page: polls /_edge/status.json and draws the last hour as an
 * inline SVG (nothing loaded from elsewhere: the machine may be offline).
 * Top panel: hit ratio (0-100 %) and requests per second (scaled to its own
 * maximum). Below: one band per upstream, coloured by breaker state.
 */
'use strict';

const REFRESH_MS = 5000;
const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 900;
const PLOT_HEIGHT = 220;
const BAND_HEIGHT = 18;
const MARGIN = { left: 48, right: 56, top: 12, bottom: 24 };
const STATE_COLOURS = { closed: '#2e9e4f', half_open: '#e0a100', open: '#c62828' };

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) node.append(child);
  return node;
}

function polyline(points, colour, cls) {
  return svg('polyline', { points: points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' '),
                           fill: 'none', stroke: colour, 'stroke-width': 2, class: cls });
}

function draw(doc) {
  const samples = doc.samples || [];
  const upstreams = [...new Set(samples.flatMap((s) => Object.keys(s.upstreams || {})))].sort();
  const height = MARGIN.top + PLOT_HEIGHT + MARGIN.bottom + upstreams.length * (BAND_HEIGHT + 4);
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const end = doc.now || (samples.length ? samples[samples.length - 1].at : 0);
  const start = end - (doc.window_seconds || 3600);
  const x = (t) => MARGIN.left + ((t - start) / (end - start)) * plotWidth;
  const maxRate = Math.max(1, ...samples.map((s) => s.requests_per_second));
  const yRatio = (r) => MARGIN.top + (1 - r) * PLOT_HEIGHT;
  const yRate = (r) => MARGIN.top + (1 - r / maxRate) * PLOT_HEIGHT;
  const chart = svg('svg', { viewBox: `0 0 ${WIDTH} ${height}`, width: '100%', role: 'img',
                             'aria-label': 'hit ratio, requests per second and upstream health over the last hour' });
  chart.append(svg('rect', { x: MARGIN.left, y: MARGIN.top, width: plotWidth, height: PLOT_HEIGHT,
                             fill: '#ffffff', stroke: '#dfe1e8' }));
  for (const fraction of [0, 0.5, 1]) {
    const y = yRatio(fraction);
    chart.append(svg('line', { x1: MARGIN.left, x2: MARGIN.left + plotWidth, y1: y, y2: y, stroke: '#eef0f4' }));
    chart.append(svg('text', { x: MARGIN.left - 6, y: y + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#2f6fde' },
                     `${Math.round(fraction * 100)} %`));
    chart.append(svg('text', { x: MARGIN.left + plotWidth + 6, y: y + 4, 'font-size': 11, fill: '#7a4fd0' },
                     `${(maxRate * fraction).toFixed(maxRate < 10 ? 1 : 0)}/s`));
  }
  // Hit ratio: a gap where an interval served nothing (ratio null).
  let run = [];
  const runs = [];
  for (const s of samples) {
    if (s.hit_ratio === null) {
      if (run.length) runs.push(run);
      run = [];
    } else {
      run.push([x(s.at), yRatio(s.hit_ratio)]);
    }
  }
  if (run.length) runs.push(run);
  for (const points of runs) {
    if (points.length === 1) chart.append(svg('circle', { cx: points[0][0], cy: points[0][1], r: 2.5, fill: '#2f6fde', class: 'hit-ratio' }));
    else chart.append(polyline(points, '#2f6fde', 'hit-ratio'));
  }
  const ratePoints = samples.map((s) => [x(s.at), yRate(s.requests_per_second)]);
  if (ratePoints.length === 1) chart.append(svg('circle', { cx: ratePoints[0][0], cy: ratePoints[0][1], r: 2.5, fill: '#7a4fd0', class: 'rate' }));
  else if (ratePoints.length) chart.append(polyline(ratePoints, '#7a4fd0', 'rate'));
  chart.append(svg('text', { x: MARGIN.left, y: MARGIN.top + PLOT_HEIGHT + 16, 'font-size': 11, fill: '#5b6275' },
                   '1 hour ago'));
  chart.append(svg('text', { x: MARGIN.left + plotWidth, y: MARGIN.top + PLOT_HEIGHT + 16, 'text-anchor': 'end',
                             'font-size': 11, fill: '#5b6275' }, 'now'));
  // Upstream bands: each sample paints its interval in its state's colour.
  upstreams.forEach((target, row) => {
    const y = MARGIN.top + PLOT_HEIGHT + MARGIN.bottom + row * (BAND_HEIGHT + 4);
    chart.append(svg('text', { x: MARGIN.left - 6, y: y + 13, 'text-anchor': 'end', 'font-size': 10, fill: '#5b6275' },
                     `#${row + 1}`));
    for (const s of samples) {
      const upstream = (s.upstreams || {})[target];
      if (!upstream) continue;
      const left = x(s.at - s.seconds);
      chart.append(svg('rect', { x: Math.max(MARGIN.left, left), y, height: BAND_HEIGHT,
                                 width: Math.max(1, x(s.at) - Math.max(MARGIN.left, left)),
                                 fill: STATE_COLOURS[upstream.state] || '#999', class: 'band', 'data-state': upstream.state },
                           svg('title', {}, `${target}: ${upstream.state}`)));
    }
  });
  document.getElementById('chart').replaceChildren(chart);

  const last = samples[samples.length - 1];
  const tbody = document.querySelector('#upstreams tbody');
  tbody.replaceChildren(...upstreams.map((target, row) => {
    const upstream = last && last.upstreams[target];
    const tr = document.createElement('tr');
    for (const text of [`#${row + 1} ${target}`, upstream ? upstream.state : '—',
                        upstream && upstream.ewma_latency !== null ? `${(upstream.ewma_latency * 1000).toFixed(1)} ms` : '—']) {
      const td = document.createElement('td');
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
}

async function refresh() {
  try {
    const response = await fetch('/_edge/status.json', { cache: 'no-store' });
    const doc = await response.json();
    document.getElementById('pop').textContent = doc.pop;
    document.getElementById('region').textContent = doc.region ? `(${doc.region})` : '';
    document.getElementById('interval').textContent = String(doc.interval_seconds);
    const summary = document.getElementById('summary');
    const totals = doc.totals || {};
    summary.dataset.samples = String(doc.samples.length);
    summary.textContent = `${doc.samples.length} sample${doc.samples.length === 1 ? '' : 's'} · hit ratio overall `
      + (totals.hit_ratio === null ? '—' : `${(totals.hit_ratio * 100).toFixed(1)} %`)
      + ` · load ${totals.load}/s`;
    draw(doc);
  } catch (e) {
    document.getElementById('summary').textContent = 'status unavailable: ' + e;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);

// Bits per byte against position in the document, for the demo page: does the
// model do better as it reads on, with more context behind each byte, or worse?
// The same series and constants as the native report's (demos/position_chart.rs):
// the running mean (the mean over bytes 1..p) at log-spaced positions p, the
// mean over log-spaced windows of positions (quarter octaves, at least MIN_BIN
// bytes), and the mean over fixed ranges of byte offsets. Bytes without a score
// (NaN: a first byte without context) count in no mean.

/** The table's ranges of byte offsets [start, end), as in demos/position_chart.rs. */
export const RANGES = [
  [0, 128, 'first 128 B'],
  [128, 1 << 10, '128 B–1 KiB'],
  [1 << 10, 8 << 10, '1–8 KiB'],
  [8 << 10, 64 << 10, '8–64 KiB'],
  [64 << 10, Infinity, 'past 64 KiB'],
];
const POINTS_PER_OCTAVE = 32;
const BINS_PER_OCTAVE = 4;
export const MIN_BIN = 16;

/** The mean of the finite values of bits[start, end), null when there are none; and how many there were. */
export function meanOf(bits, start, end) {
  let sum = 0;
  let n = 0;
  for (let i = start; i < end; i++) if (Number.isFinite(bits[i])) { sum += bits[i]; n++; }
  return { mean: n ? sum / n : null, scored: n };
}

/** [p, mean of bits[0, p)] at every position to about 46, then 32 per octave, and the last; from the first position with a score on. */
export function runningMean(bits) {
  const at = [];
  for (let k = 0; ; k++) {
    const p = Math.round(2 ** (k / POINTS_PER_OCTAVE));
    if (p >= bits.length) break;
    if (at[at.length - 1] !== p) at.push(p);
  }
  at.push(bits.length);
  const out = [];
  let sum = 0;
  let n = 0;
  let i = 0;
  for (const p of at) {
    for (; i < p; i++) if (Number.isFinite(bits[i])) { sum += bits[i]; n++; }
    if (n) out.push([p, sum / n]);
  }
  return out;
}

/** Bins [start, end) of byte offsets that cover [0, len) once: each ends at the first quarter-octave
 * edge (2^(k/4), rounded) at least MIN_BIN bytes past its start; a short last one joins the one before. */
export function logBins(len) {
  const bins = [];
  let start = 0;
  let k = 0;
  while (start < len) {
    let end;
    for (;; k++) {
      end = Math.round(2 ** (k / BINS_PER_OCTAVE));
      if (end >= start + MIN_BIN) break;
    }
    end = Math.min(end, len);
    if (bins.length && end - start < MIN_BIN) bins[bins.length - 1][1] = end;
    else bins.push([start, end]);
    start = end;
  }
  return bins;
}

/** Each window's [start, end, mean] (mean null where no byte of it has a score). */
export const windowedMean = (bits) => logBins(bits.length).map(([a, b]) => [a, b, meanOf(bits, a, b).mean]);

/** The ranges the document reaches, cut to it, then the whole document: { label, start, end, scored, mean }. */
export function rangeMeans(bits) {
  const rows = RANGES.filter(([a]) => a < bits.length).map(([a, b, label]) => ({ label, start: a, end: Math.min(b, bits.length) }));
  rows.push({ label: 'whole document', start: 0, end: bits.length });
  return rows.map((r) => ({ ...r, ...meanOf(bits, r.start, r.end) }));
}

/** A sentence on the trend: the first range's mean against the last one's (null with one range). */
export function trend(rows) {
  const ranges = rows.slice(0, -1);
  if (ranges.length < 2) return null;
  const [first, last] = [ranges[0], ranges[ranges.length - 1]];
  if (first.mean === null || last.mean === null) return null;
  const how = last.mean < first.mean - 0.05 ? 'falls' : last.mean > first.mean + 0.05 ? 'rises' : 'stays about level';
  return `Bits per byte ${how} from ${first.mean.toFixed(2)} over the ${first.label} to ${last.mean.toFixed(2)} over ${last.label.replace('past', 'bytes past')}.`;
}

/** Everything the chart and the table need, from the per-byte surprisal of `score` (its `bytes`). */
export function positionStats(bits) {
  const ranges = rangeMeans(bits);
  return { bytes: bits.length, running: runningMean(bits), windows: windowedMean(bits), ranges, trend: trend(ranges) };
}

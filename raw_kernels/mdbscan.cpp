// MDBSCAN superpixel segmentation: the sequential pixel loops (region growing, small-cluster merging,
// strand cleaning, renumbering). Plain C++17, no dependencies; compiled on first use and loaded with ctypes
// by smoe_core/_mdbscan_build.py. The Python side (smoe_core/segment.py) does the Gaussian pre-filter and
// documents every choice; this file follows /work/shared/mdbscan.md steps 2-5 literally, and
// smoe_core.segment._mdbscan_python is a line-by-line NumPy/Python twin used to test it.
//
// Two variants (segment.py's docstring has the details):
//   0 "spec":    mdbscan.md as written (all existing 4-neighbours at the border; strand step takes the larger
//                label; then every 4-connected component of < 30 pixels is re-examined).
//   1 "authors": the authors' public MATLAB/C++ code (yihsinli/AS-SMoE, MDBSCAN-old/code): its border
//                neighbour sets in the growing step, the growing test in floating point, and its
//                post-processing (the smaller of the two labels; only the components next to a relabelled
//                pixel are re-examined, by a search capped at 31 pixels that wraps across row ends).
//
// Input: rgb, H*W*3 bytes (row-major, channel last), already pre-filtered.
// Output: labels, H*W int32, 1..N in raster order of first appearance. Returns N (>= 1), or < 0 on bad input.
#include <cstdint>
#include <vector>
#include <algorithm>
#include <limits>

namespace {

struct Img {
    const uint8_t* rgb;
    int H, W;
    inline int64_t d2(int p, int q) const {  // squared RGB distance between two pixels
        int64_t s = 0;
        for (int k = 0; k < 3; ++k) {
            int64_t d = int64_t(rgb[3 * p + k]) - int64_t(rgb[3 * q + k]);
            s += d * d;
        }
        return s;
    }
};

// 4-neighbours of pixel p in the order right, up, left, down (only those inside the image).
inline int neighbours(int p, int H, int W, int out[4]) {
    int r = p / W, c = p - r * W, n = 0;
    if (c + 1 < W) out[n++] = p + 1;
    if (r > 0) out[n++] = p - W;
    if (c > 0) out[n++] = p - 1;
    if (r + 1 < H) out[n++] = p + W;
    return n;
}

// The authors' growing neighbourhoods (their regionQuery): interior pixels right, up, left, down; bottom row
// (but its last pixel) left, right -- its first pixel's "left" is the last pixel of the row above; right
// column (but its last pixel) down, left; left column (but its last pixel) down, right; top row (but its
// corners) down, right; the bottom-right pixel none. Indices outside the image are dropped.
inline int neighbours_authors(int p, int H, int W, int out[4]) {
    const int x = p / W + 1, y = p % W + 1;  // 1-based row and column, as in the authors' code
    int n = 0;
    if (x > 1 && x < H && y > 1 && y < W) { out[n++] = p + 1; out[n++] = p - W; out[n++] = p - 1; out[n++] = p + W; }
    if (x == H && y < W) { out[n++] = p - 1; out[n++] = p + 1; }
    if (x < H && y == W) { out[n++] = p + W; out[n++] = p - 1; }
    if (x < H && y == 1) { out[n++] = p + W; out[n++] = p + 1; }
    if (x == 1 && y > 1 && y < W) { out[n++] = p + W; out[n++] = p + 1; }
    int m = 0;
    for (int i = 0; i < n; ++i)
        if (out[i] >= 0 && out[i] < H * W) out[m++] = out[i];
    return m;
}

// Step 2: breadth-first region growing from raster-order seeds. Returns the number of clusters;
// labels are 1..N.  Criterion 0.62 |c_q - c_seed|^2 + 0.38 |c_q - c_n|^2 < E^2, evaluated exactly as
// 62 a + 38 b < 100 E^2 (a, b integers) in the spec variant, and as the authors do, in double, in theirs.
int grow(const Img& im, double E, int variant, int32_t* lab) {
    const int HW = im.H * im.W;
    const double rhs = 100.0 * E * E, E2 = E * E;
    std::fill(lab, lab + HW, 0);
    std::vector<int> queue(HW);
    int n_clusters = 0, nb[4];
    for (int p = 0; p < HW; ++p) {
        if (lab[p]) continue;
        const int L = ++n_clusters;
        lab[p] = L;
        int head = 0, tail = 0;
        queue[tail++] = p;
        while (head < tail) {
            const int n = queue[head++];
            const int k = variant ? neighbours_authors(n, im.H, im.W, nb) : neighbours(n, im.H, im.W, nb);
            for (int i = 0; i < k; ++i) {
                const int q = nb[i];
                if (lab[q]) continue;
                const int64_t a = im.d2(q, p), b = im.d2(q, n);
                const bool join = variant ? (0.62 * double(a) + 0.38 * double(b) < E2)
                                          : (double(62 * a + 38 * b) < rhs);
                if (join) {
                    lab[q] = L;
                    queue[tail++] = q;
                }
            }
        }
    }
    return n_clusters;
}

int find(std::vector<int>& parent, int x) {
    int r = x;
    while (parent[r] != r) r = parent[r];
    while (parent[x] != r) { int nx = parent[x]; parent[x] = r; x = nx; }
    return r;
}

// Step 3: clusters in label order; one with fewer than min_size pixels (current size, including what it
// absorbed earlier) merges into the 4-adjacent cluster minimizing |mean RGB diff|^2 + 2 |centroid diff|^2
// (centroid (row, col) in pixels) when that is below thr. Ties go to the smaller label. The target's
// statistics are kept as sums, so its mean and centroid are the size-weighted averages.
void merge_small(const Img& im, int N, int min_size, double thr, int32_t* lab) {
    const int HW = im.H * im.W, W = im.W;
    std::vector<double> sum(size_t(N + 1) * 5, 0.0);  // R, G, B, row, col
    std::vector<int64_t> size(N + 1, 0);
    for (int p = 0; p < HW; ++p) {
        const int l = lab[p];
        double* s = &sum[size_t(l) * 5];
        for (int k = 0; k < 3; ++k) s[k] += im.rgb[3 * p + k];
        s[3] += p / W;
        s[4] += p % W;
        size[l] += 1;
    }
    // adjacency of the original clusters (CSR, unique, sorted)
    std::vector<std::pair<int, int>> pairs;
    pairs.reserve(HW / 4);
    for (int p = 0; p < HW; ++p) {
        const int r = p / W, c = p % W;
        if (c + 1 < W && lab[p] != lab[p + 1]) {
            int a = lab[p], b = lab[p + 1];
            pairs.emplace_back(a, b);
            pairs.emplace_back(b, a);
        }
        if (r + 1 < im.H && lab[p] != lab[p + W]) {
            int a = lab[p], b = lab[p + W];
            pairs.emplace_back(a, b);
            pairs.emplace_back(b, a);
        }
    }
    std::sort(pairs.begin(), pairs.end());
    pairs.erase(std::unique(pairs.begin(), pairs.end()), pairs.end());
    std::vector<int> start(N + 2, 0);
    for (auto& pr : pairs) start[pr.first + 1] += 1;
    for (int l = 0; l <= N; ++l) start[l + 1] += start[l];

    std::vector<int> parent(N + 1), next(N + 1, 0), tail(N + 1);
    for (int l = 0; l <= N; ++l) { parent[l] = l; tail[l] = l; }
    std::vector<int> cand;
    for (int i = 1; i <= N; ++i) {
        if (parent[i] != i || size[i] >= min_size) continue;  // only the visited cluster is ever absorbed
        const double* si = &sum[size_t(i) * 5];
        double mi[5];
        for (int k = 0; k < 5; ++k) mi[k] = si[k] / double(size[i]);
        cand.clear();
        for (int m = i; m; m = next[m])
            for (int e = start[m]; e < start[m + 1]; ++e) {
                const int r = find(parent, pairs[e].second);
                if (r != i) cand.push_back(r);
            }
        std::sort(cand.begin(), cand.end());
        cand.erase(std::unique(cand.begin(), cand.end()), cand.end());
        int best = 0;
        double best_cost = std::numeric_limits<double>::infinity();
        for (int j : cand) {
            const double* sj = &sum[size_t(j) * 5];
            double cost = 0.0;
            for (int k = 0; k < 5; ++k) {
                const double d = mi[k] - sj[k] / double(size[j]);
                cost += (k < 3 ? 1.0 : 2.0) * d * d;
            }
            if (cost < best_cost) { best_cost = cost; best = j; }
        }
        if (best && best_cost < thr) {
            parent[i] = best;
            double* sj = &sum[size_t(best) * 5];
            for (int k = 0; k < 5; ++k) sj[k] += si[k];
            size[best] += size[i];
            next[tail[best]] = i;  // append i's member list to best's
            tail[best] = tail[i];
        }
    }
    for (int p = 0; p < HW; ++p) lab[p] = find(parent, lab[p]);
}

// Step 4: thin strands, then small 4-connected components.
void clean_strands(const Img& im, int N, int strand_size, double thr, int32_t* lab) {
    const int H = im.H, W = im.W, HW = H * W;
    std::vector<int64_t> size(N + 1, 0);
    for (int p = 0; p < HW; ++p) size[lab[p]] += 1;
    auto move = [&](int p, int to) { size[lab[p]] -= 1; size[to] += 1; lab[p] = to; };
    for (int r = 1; r + 1 < H; ++r)
        for (int c = 1; c + 1 < W; ++c) {
            const int p = r * W + c;
            int L = lab[p - 1], R = lab[p + 1];
            if (L != lab[p] && R != lab[p]) move(p, size[L] >= size[R] ? L : R);
            int U = lab[p - W], D = lab[p + W];
            if (U != lab[p] && D != lab[p]) move(p, size[U] >= size[D] ? U : D);
        }
    std::vector<uint8_t> seen(HW, 0);
    std::vector<int> comp;
    comp.reserve(1024);
    int nb[4];
    for (int p = 0; p < HW; ++p) {
        if (seen[p]) continue;
        const int l = lab[p];
        comp.clear();
        comp.push_back(p);
        seen[p] = 1;
        for (size_t h = 0; h < comp.size(); ++h) {
            const int k = neighbours(comp[h], H, W, nb);
            for (int i = 0; i < k; ++i)
                if (!seen[nb[i]] && lab[nb[i]] == l) { seen[nb[i]] = 1; comp.push_back(nb[i]); }
        }
        if (int(comp.size()) >= strand_size) continue;
        double mean[3] = {0, 0, 0};
        for (int q : comp)
            for (int k = 0; k < 3; ++k) mean[k] += im.rgb[3 * q + k];
        for (int k = 0; k < 3; ++k) mean[k] /= double(comp.size());
        int best = 0;
        double best_d = std::numeric_limits<double>::infinity();
        for (int q : comp) {
            const int k = neighbours(q, H, W, nb);
            for (int i = 0; i < k; ++i) {
                const int o = nb[i];
                if (lab[o] == l) continue;
                double d = 0.0;
                for (int ch = 0; ch < 3; ++ch) {
                    const double x = double(im.rgb[3 * o + ch]) - mean[ch];
                    d += x * x;
                }
                if (d < best_d) { best_d = d; best = lab[o]; }
            }
        }
        if (best && best_d < thr)
            for (int q : comp) lab[q] = best;
    }
}

// Step 4, the authors' way. mergin(n): the 4-connected same-label component of pixel n, searched
// breadth-first with neighbours index+1, index-1, index+W, index-W (so +-1 wraps across row ends) and
// abandoned once it exceeds 30 pixels; a component of fewer than 30 pixels takes the label of the boundary
// pixel (first found) whose colour is closest to the component's mean, if that squared distance is below
// thr. Pixel index 0 is never a target (their code uses 0 as "none").
void mergin(const Img& im, int n, double thr, std::vector<int>& comp, std::vector<int>& border, int32_t* lab) {
    const int W = im.W, HW = im.H * im.W;
    comp.clear();
    border.clear();
    comp.push_back(n);
    for (size_t j = 0; j < comp.size(); ++j) {
        const int p = comp[j];
        const int cand[4] = {p + 1, p - 1, p + W, p - W};
        for (int q : cand) {
            if (q < 0 || q >= HW) continue;
            if (lab[q] == lab[p]) {
                if (std::find(comp.begin(), comp.end(), q) == comp.end()) comp.push_back(q);
            } else {
                border.push_back(q);
            }
        }
        if (comp.size() > 30) return;
    }
    if (comp.size() >= 30) return;
    double mean[3] = {0, 0, 0};
    for (int q : comp)
        for (int k = 0; k < 3; ++k) mean[k] += im.rgb[3 * q + k];
    for (int k = 0; k < 3; ++k) mean[k] /= double(comp.size());
    double best_d = thr;
    int target = 0;
    for (int t : border) {
        if (t <= 0) continue;
        double d = 0.0;
        for (int k = 0; k < 3; ++k) {
            const double x = mean[k] - double(im.rgb[3 * t + k]);
            d += x * x;
        }
        if (d < best_d) { best_d = d; target = t; }
    }
    if (target > 0) {
        const int32_t L = lab[target];
        for (int q : comp) lab[q] = L;
    }
}

// The authors' strand pass: labels and sizes read before the pixel changes; the smaller of the two labels
// (left, resp. down, on a tie); after a left/right change the components of the pixels below and above are
// re-examined, after an up/down change those of the pixels right and left. Sizes are not updated.
void clean_strands_authors(const Img& im, int N, double thr, int32_t* lab) {
    const int H = im.H, W = im.W, HW = H * W;
    std::vector<int64_t> size(N + 1, 0);
    for (int p = 0; p < HW; ++p) size[lab[p]] += 1;
    std::vector<int> comp, border;
    comp.reserve(64);
    border.reserve(256);
    for (int r = 1; r + 1 < H; ++r)
        for (int c = 1; c + 1 < W; ++c) {
            const int n = r * W + c;
            const int l = lab[n], lr = lab[n + 1], ll = lab[n - 1], lu = lab[n - W], ld = lab[n + W];
            if (lr != l && ll != l) {
                lab[n] = size[lr] >= size[ll] ? ll : lr;
                mergin(im, n + W, thr, comp, border, lab);
                mergin(im, n - W, thr, comp, border, lab);
            }
            if (lu != l && ld != l) {
                lab[n] = size[lu] >= size[ld] ? ld : lu;
                mergin(im, n + 1, thr, comp, border, lab);
                mergin(im, n - 1, thr, comp, border, lab);
            }
        }
}

// Step 5: renumber 1..N in raster order of first appearance.
int renumber(int HW, int N, int32_t* lab) {
    std::vector<int32_t> map(N + 1, 0);
    int n = 0;
    for (int p = 0; p < HW; ++p) {
        int32_t& m = map[lab[p]];
        if (!m) m = ++n;
        lab[p] = m;
    }
    return n;
}

}  // namespace

extern "C" {

// Runs steps 2..last_step (2: growing only, 3: + merging, 4: + strand cleaning), then renumbers.
// variant 0: spec, 1: authors (strand_size is then fixed at 30 as in their code).
int mdbscan_segment(const uint8_t* rgb, int H, int W, double E, int min_size, double merge_thr,
                    int strand_size, double strand_thr, int last_step, int variant, int32_t* labels) {
    if (!rgb || !labels || H < 1 || W < 1 || int64_t(H) * W > std::numeric_limits<int>::max() / 4) return -1;
    if (variant != 0 && variant != 1) return -2;
    Img im{rgb, H, W};
    int N = grow(im, E, variant, labels);
    if (last_step >= 3) merge_small(im, N, min_size, merge_thr, labels);
    if (last_step >= 4) {
        if (variant) clean_strands_authors(im, N, strand_thr, labels);
        else clean_strands(im, N, strand_size, strand_thr, labels);
    }
    return renumber(H * W, N, labels);
}

int mdbscan_abi_version() { return 2; }

}  // extern "C"

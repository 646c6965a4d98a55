"""Exact path-dependent TreeSHAP of the compiled forest, in time linear in the size of each tree.

What is computed is what ``shap.TreeExplainer(forest, feature_perturbation="tree_path_dependent")``
computes: the Shapley values of the game where a coalition ``S`` of features is worth the tree's
expected output when the features outside ``S`` follow the training rows' split proportions (the
node covers). Only the method differs; shap's recursion costs O(leaves x depth^2) a row, which on
an unlimited-depth forest is about a second. Here it is O(nodes x depth / 2):

For one leaf ``v`` of a tree, write, for each feature ``j`` split on along its path, ``q_j`` for the
product of the cover ratios child/parent of its edges and ``p_j`` for 1 if the row follows them all,
else 0. The leaf's game is ``value_v * prod_{j in S} p_j * prod_{j not in S} q_j``, a product game,
and its Shapley value for feature ``i`` is, with ``f_j(t) = (1 - t) q_j + t p_j``,

    phi_i(v) = value_v * (p_i - q_i) * integral_0^1 prod_{j != i} f_j(t) dt

(the Shapley weights are the Beta integrals of ``t^|S| (1 - t)^(n - 1 - |S|)``). The integrand is a
polynomial of degree below the path's length, so Gauss-Legendre quadrature with ``m`` nodes,
``2m > depth``, gives the integral exactly. With ``G_v(t) = prod_j f_j(t)``, each term is
``G_v(t) (p_i - q_i) / f_i(t)``; ``G`` is updated edge by edge on the way down and its sum over the
leaves below each node on the way up, so each edge adds its feature's share for every leaf under
it at once. A feature split on again deeper replaces its factor: the edge adds the difference
between the new and the previous ``(p - q) / f``, and these differences add up, leaf by leaf, to
the last one (the quadrature is linear, so the sum is exact although the terms are not
polynomials). This is the idea of Linear TreeSHAP (Yu et al., NeurIPS 2022), evaluated here with
quadrature nodes instead of polynomial interpolation.

Local accuracy holds by construction: the base value (the cover-weighted mean of the leaves) plus
the contributions of a row equals its probability, to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyfunc.jit import njit


def quadrature(points: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(points)
    return (x + 1.0) / 2.0, w / 2.0


@njit()
def _path_features(right, feature, roots, n_nodes):  # noqa: ANN001, ANN202
    """Per tree: the largest number of distinct features on a path from its root to a leaf."""
    out = np.zeros(roots.shape[0], dtype=np.int64)
    n_features = feature.max() + 1 if feature.shape[0] else 1
    count = np.zeros(n_features, dtype=np.int64)
    for t in range(roots.shape[0]):
        root = roots[t]
        # depth-first walk with an explicit stack: node, phase (0 left next, 1 right next, 2 done)
        stack_node = np.empty(n_nodes[t] + 1, dtype=np.int64)
        stack_phase = np.zeros(n_nodes[t] + 1, dtype=np.int64)
        distinct = 0
        best = 0
        d = 0
        stack_node[0] = root
        stack_phase[0] = 0
        while d >= 0:
            node = stack_node[d]
            if right[node] < 0:
                best = max(best, distinct)
                d -= 1
                continue
            f = feature[node]
            phase = stack_phase[d]
            if phase == 0:
                if count[f] == 0:
                    distinct += 1
                count[f] += 1
                stack_phase[d] = 1
                stack_node[d + 1] = node + 1
                stack_phase[d + 1] = 0
                d += 1
            elif phase == 1:
                stack_phase[d] = 2
                stack_node[d + 1] = right[node]
                stack_phase[d + 1] = 0
                d += 1
            else:
                count[f] -= 1
                if count[f] == 0:
                    distinct -= 1
                d -= 1
        out[t] = best
    return out


# The kinds of edge a row can take, by (p before, p after) of the edge's feature: the row has followed
# the feature's splits so far and follows this one (1, 1), leaves it here (1, 0), or had left it (0, 0).
FOLLOWS, LEAVES, LEFT = 0, 1, 2
BATCH_ROWS = 16  # rows explained together: their per-row state stays in the core's caches


@njit(nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _tree_shap(X, roots, depths, points, t_nodes, t_weights, right, feature, threshold, ratio, value,  # noqa: ANN001, ANN202, C901, PLR0912, PLR0913, PLR0915
               n_out):
    """Contributions (rows x features x n_out) summed over the trees, not yet divided by their number.

    Depth-first over each tree with an explicit stack, for a batch of rows at once: every row visits
    every node. Per level ``d``: the node and which child is next (shared), and per row the products
    ``G`` of its path's factors at the quadrature nodes and the sums ``S`` of value x G over the leaves
    below. The cover ratios ``q`` do not depend on the row, only whether it follows a split (``p``),
    so an edge has three possible factors and coefficients (see FOLLOWS...), computed once for the
    batch and only for the kinds some row of it took; a row then only multiplies and adds, in plain
    loops over the quadrature nodes that vectorise. A leaf child is settled where its parent is.

    The only divisions are the new factor's reciprocals ``1 / f`` of an edge some row follows, kept per
    level: a deeper split on the same feature reads the factor it replaces there (``last``) instead of
    dividing again, and an edge no row follows needs none (a row that left a feature never follows it
    again, so nothing below reads it). A row alone takes one kind an edge, so it pays for one kind's.
    ``error_model="numpy"``: no divisor here can be 0 (covers are positive, t < 1), and numba's Python
    error model would test each one for it, which keeps the division loops from vectorising. With the
    quadrature padded to a multiple of 4 points (see :meth:`TreeExplainer.build`), one row of the
    benchmark's forest (100 trees, 343k nodes) takes 14 ms of CPU instead of 22.
    """
    n_rows, n_features = X.shape
    levels = depths.max() + 2
    max_points = t_nodes.shape[1]
    phi = np.zeros((n_rows, n_features, n_out))
    node_at = np.empty(levels, dtype=np.int64)
    phase = np.empty(levels, dtype=np.int64)
    saved_q = np.empty(levels)
    saved_last = np.empty(levels, dtype=np.int64)
    seen = np.zeros(n_features, dtype=np.int64)  # splits on each feature above the current node
    cur_q = np.ones(n_features)
    last = np.full(n_features, -1, dtype=np.int64)  # the level of the latest edge on each feature some row followed
    # per level: 1 / f of its edge's factor for a row following it; and a last row of ones, the "edge above" of a
    # feature's first split, so that one formula serves both (q0 is 1 there too)
    reciprocal = np.empty((levels + 1, max_points))
    reciprocal[levels, :] = 1.0
    factor = np.empty((levels, 3, max_points))  # per kind: what G is multiplied by on the edge
    coef = np.empty((levels, 3, max_points))  # per kind: the edge's feature gains coef . S below
    coef[:, LEFT, :] = 0.0  # -1 / (1 - t) replaced by itself: a row that had left a feature gains nothing
    for start in range(0, n_rows, BATCH_ROWS):
        rows = min(BATCH_ROWS, n_rows - start)
        G = np.empty((levels, rows, max_points))
        S = np.empty((levels, rows, n_out, max_points))
        kind = np.empty((levels, rows), dtype=np.int64)  # the edge each row took from level d
        cur_p = np.ones((rows, n_features))
        for tree in range(roots.shape[0]):
            root = roots[tree]
            if right[root] < 0:  # a tree of one leaf explains nothing
                continue
            m = points[tree]
            tk = t_nodes[tree]
            wk = t_weights[tree]
            w_over_s = wk / (1.0 - tk)
            d = 0
            node_at[0] = root
            phase[0] = 0
            for r in range(rows):
                for k in range(m):
                    G[0, r, k] = 1.0
            while True:
                node = node_at[d]
                if phase[d] == 2:  # both children done: back to the parent, whose edge adds its share
                    if d == 0:
                        break
                    d -= 1
                    i = feature[node_at[d]]
                    for r in range(rows):
                        j = kind[d, r]
                        for c in range(n_out):
                            acc = 0.0
                            if phase[d] == 0:
                                for k in range(m):
                                    below = S[d + 1, r, c, k]
                                    acc += coef[d, j, k] * below
                                    S[d, r, c, k] = below
                            else:
                                for k in range(m):
                                    below = S[d + 1, r, c, k]
                                    acc += coef[d, j, k] * below
                                    S[d, r, c, k] += below
                            phi[start + r, i, c] += acc
                        cur_p[r, i] = 1.0 if j != LEFT else 0.0
                    seen[i] -= 1
                    cur_q[i] = saved_q[d]
                    last[i] = saved_last[d]
                    phase[d] += 1
                    continue
                left_side = phase[d] == 0
                child = node + 1 if left_side else right[node]
                i = feature[node]
                q0 = cur_q[i]
                q = q0 * ratio[child]
                again = seen[i] > 0
                follows_any = leaves_any = left_any = False
                for r in range(rows):
                    if cur_p[r, i] == 0.0:
                        kind[d, r] = LEFT
                        left_any = True
                    elif (X[start + r, i] <= threshold[node]) == left_side:
                        kind[d, r] = FOLLOWS
                        follows_any = True
                    else:
                        kind[d, r] = LEAVES
                        leaves_any = True
                # the kinds' factor f(t) = (1 - t) q + t p over the factor it replaces, and coefficients
                # (p - q) / f - (p0 - q0) / f0; a row leaving the feature gets -1 / (1 - t) whatever q is
                # (on a feature split again, a row that follows or leaves still followed it: last[i] is its edge)
                e = last[i] if again else levels
                if follows_any:
                    for k in range(m):
                        t = tk[k]
                        follows = (1.0 - t) * q + t
                        inverse = 1.0 / follows
                        reciprocal[d, k] = inverse
                        factor[d, FOLLOWS, k] = follows * reciprocal[e, k]
                        coef[d, FOLLOWS, k] = wk[k] * ((1.0 - q) * inverse - (1.0 - q0) * reciprocal[e, k])
                if leaves_any:
                    for k in range(m):
                        factor[d, LEAVES, k] = (1.0 - tk[k]) * q * reciprocal[e, k]
                        coef[d, LEAVES, k] = -w_over_s[k] - wk[k] * (1.0 - q0) * reciprocal[e, k]
                if left_any:  # -1 / (1 - t) replaced by itself: coef 0, and a factor the same at every node
                    left_factor = q * (1.0 / q0)
                    for k in range(m):
                        factor[d, LEFT, k] = left_factor
                if right[child] < 0:  # a leaf: value x G into S, and its share into phi, here
                    for r in range(rows):
                        j = kind[d, r]
                        total = 0.0
                        for k in range(m):
                            total += coef[d, j, k] * factor[d, j, k] * G[d, r, k]
                        for c in range(n_out):
                            v = value[child, c]
                            phi[start + r, i, c] += total * v
                            if left_side:
                                for k in range(m):
                                    S[d, r, c, k] = G[d, r, k] * factor[d, j, k] * v
                            else:
                                for k in range(m):
                                    S[d, r, c, k] += G[d, r, k] * factor[d, j, k] * v
                    phase[d] += 1
                    continue
                for r in range(rows):
                    j = kind[d, r]
                    for k in range(m):
                        G[d + 1, r, k] = G[d, r, k] * factor[d, j, k]
                    if kind[d, r] == LEAVES:
                        cur_p[r, i] = 0.0
                saved_q[d] = q0
                saved_last[d] = last[i]
                if follows_any:
                    last[i] = d
                seen[i] += 1
                cur_q[i] = q
                node_at[d + 1] = child
                phase[d + 1] = 0
                d += 1
    return phi


@njit()
def _expected_values(roots, n_nodes, right, cover, value):  # noqa: ANN001, ANN202
    """Per tree and output: the leaves' values weighted by their share of the root's cover."""
    out = np.zeros((roots.shape[0], value.shape[1]))
    for t in range(roots.shape[0]):
        root = roots[t]
        for node in range(root, root + n_nodes[t]):
            if right[node] < 0:
                for c in range(value.shape[1]):
                    out[t, c] += value[node, c] * cover[node] / cover[root]
    return out


@dataclass(frozen=True)
class TreeExplainer:
    """TreeSHAP of an ensemble whose output is the mean (``average=True``) or the sum of its trees.

    When every leaf's outputs sum to 1 (class probabilities), only the first ``n - 1`` are explained
    and the last follows (contributions sum to zero across classes): half the work on a binary target.
    """

    roots: np.ndarray
    right: np.ndarray  # node layout (pyfunc/fast.py: node_dtype): the left child is the next node, right < 0 a leaf
    feature: np.ndarray
    threshold: np.ndarray
    ratio: np.ndarray  # each node's cover over its parent's
    value: np.ndarray  # the leaves' outputs explained (all, or all but the last)
    n_outputs: int
    average: bool
    points: np.ndarray  # quadrature nodes a tree: exact for its longest path, padded (see build)
    t_nodes: np.ndarray
    t_weights: np.ndarray
    depths: np.ndarray  # longest root-to-leaf path a tree, in edges
    base: np.ndarray  # the expected output, one an output

    @classmethod
    def build(cls, roots: np.ndarray, right: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
              cover: np.ndarray, value: np.ndarray, depths: np.ndarray, average: bool,
              probabilities: bool) -> TreeExplainer:
        if np.any(cover <= 0):
            raise ValueError("a node with no training weight: its cover ratio is undefined")
        n_nodes = np.diff(np.append(roots, len(right)))
        distinct = _path_features(right, feature, roots, n_nodes)
        exact = np.maximum(1, (distinct + 1) // 2)  # exact: 2m - 1 >= the degree, distinct - 1
        # padded with points of weight 0 (they add exactly 0; t = 0.5 keeps their factors finite) to a multiple
        # of the 4 doubles a vector holds: the kernel's loops over them then leave no scalar remainder
        points = (exact + 3) // 4 * 4
        t_nodes = np.full((len(roots), points.max()), 0.5)
        t_weights = np.zeros_like(t_nodes)
        for tree, m in enumerate(exact):
            t_nodes[tree, :m], t_weights[tree, :m] = quadrature(int(m))
        per_tree = _expected_values(roots, n_nodes, right, cover, value)
        base = per_tree.mean(axis=0) if average else per_tree.sum(axis=0)
        ratio = np.ones_like(cover)
        internal = np.flatnonzero(right >= 0)
        ratio[internal + 1] = cover[internal + 1] / cover[internal]
        ratio[right[internal]] = cover[right[internal]] / cover[internal]
        n_outputs = value.shape[1]
        explained = n_outputs - 1 if probabilities and n_outputs > 1 else n_outputs
        return cls(roots, right, feature, threshold, ratio, np.ascontiguousarray(value[:, :explained]), n_outputs,
                   average, points, t_nodes, t_weights, depths, base)

    def contributions(self, X32: np.ndarray) -> np.ndarray:
        """Rows x features x outputs: each feature's share of each output, beside :attr:`base`."""
        phi = _tree_shap(X32, self.roots, self.depths, self.points, self.t_nodes, self.t_weights, self.right,
                         self.feature, self.threshold, self.ratio, self.value, self.value.shape[1])
        if self.average:
            phi /= len(self.roots)
        if self.value.shape[1] < self.n_outputs:
            phi = np.concatenate([phi, -phi.sum(axis=2, keepdims=True)], axis=2)
        return phi

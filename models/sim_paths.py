"""The particle filter's paths, replayed and scored: compiled loops for
:meth:`models.sim_filter.ParticleFilter.move`.

A move replays each particle's interests along its recorded path (the logits after each event,
from the path's draws) and sums the events' likelihood along it, at every Metropolis step: for
8,000 particles over 128 events of 12 categories, 12 million logits a step. In numpy that is a
Python loop over the events of whole-array operations, with a temporary array for each one; here
each particle's path is replayed and scored in one pass (numba), proposals included, and only the
accepted paths are written back.

The arrays are :meth:`models.sim_filter.ParticleFilter.paths`': per particle (axis 0) and step
(axis 1) the shift flags ``reset``, base points ``base``, draws ``xi`` and ``xr``, logits ``z``,
the events' branches ``cat``, ``sc`` and ``intent``, and the habit's boost ``habit``; per step the
decay ``a``, noise scale ``s`` and dwell time ``dwell`` (NaN: none); per particle ``z0`` (n, K) the
logits before the first step and ``habit_k`` (n,) the habit's category.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from models.simulate import DRIFT_NOISE, K, STICKY


@njit(cache=True)
def _replay(zprev, base, reset, a, s, xi, xr, out, start):
    """One particle: ``out[start:]`` (T, K), the logits after each step from ``start`` on, given
    those before it ``zprev`` (K,) (:meth:`models.sim_filter.ParticleFilter._advance`: a shift
    resets the logits around the base point, then the drift decays them toward it)."""
    for i in range(start, xi.shape[0]):
        for k in range(xi.shape[1]):
            b = base[i, k]
            if reset[i]:
                u = b + DRIFT_NOISE * xr[i, k]
            elif i == start:
                u = zprev[k]
            else:
                u = out[i - 1, k]
            out[i, k] = b + a[i] * (u - b) + s[i] * xi[i, k]


@njit(cache=True)
def _event_ll(pc, c, sc, dwell):
    """One event's log-probability of its category ``c`` and dwell time, given ``pc`` the
    probability of ``c`` under the interests: its session's category ``sc`` (-1: none) holds it
    with probability ``STICKY``, and a dwell (NaN: none) is log-normal around the interest in it."""
    v = (1.0 - STICKY) * pc + (STICKY if c == sc else 0.0) if sc >= 0 else pc
    ll = math.log(max(v, 1e-300))
    if not math.isnan(dwell):
        zz = (math.log(dwell / 8000.0) - 0.6 * math.log(pc * K)) / 0.7
        ll -= 0.5 * zz * zz
    return ll


@njit(cache=True)
def _loglik(z, habit_k, habit, cat, sc, intent, dwell):
    """One particle: the log-probability of the events' categories and dwell times along its path
    with logits ``z`` (T, K) (:meth:`models.sim_filter.ParticleFilter.observe`; an intent search's
    is 0, since it does not depend on the interests)."""
    total = 0.0
    for i in range(z.shape[0]):
        if intent[i]:
            continue
        m = -np.inf
        for k in range(z.shape[1]):
            m = max(m, z[i, k] + (habit[i] if k == habit_k else 0.0))
        norm = 0.0
        for k in range(z.shape[1]):
            norm += math.exp(z[i, k] + (habit[i] if k == habit_k else 0.0) - m)
        c = cat[i]
        pc = math.exp(z[i, c] + (habit[i] if c == habit_k else 0.0) - m) / norm  # P(category c)
        total += _event_ll(pc, c, sc[i], dwell[i])
    return total


@njit(cache=True)
def loglik_by_habit(z, boost, cat, sc, intent, dwell):
    """(n, K) each particle's :func:`_loglik` had its habit been each category in turn, its boosts
    ``boost`` (n, T) held: one pass over the path (the softmax's normaliser changes by one term
    from one habit to the next)."""
    n, steps, k = z.shape
    out = np.zeros((n, k))
    e = np.empty(k)
    for p in range(n):
        for i in range(steps):
            if intent[p, i]:
                continue
            b = boost[p, i]
            m = -np.inf
            for j in range(k):
                m = max(m, z[p, i, j])
            m += max(b, 0.0)
            total = 0.0
            for j in range(k):
                e[j] = math.exp(z[p, i, j] - m)
                total += e[j]
            c, eb = cat[p, i], math.exp(b)
            for h in range(k):
                norm = total - e[h] + e[h] * eb
                pc = e[c] * (eb if c == h else 1.0) / norm  # P(category c) with the habit on h
                out[p, h] += _event_ll(pc, c, sc[p, i], dwell[i])
    return out


@njit(cache=True)
def replay_all(z0, base, reset, a, s, xi, xr, out):
    """``out`` (n, T, K): every particle's logits after each step."""
    for p in range(xi.shape[0]):
        _replay(z0[p], base[p], reset[p], a, s, xi[p], xr[p], out[p], 0)


@njit(cache=True)
def loglik_all(z, habit_k, habit, cat, sc, intent, dwell):
    """(n,) every particle's :func:`_loglik`."""
    out = np.empty(z.shape[0])
    for p in range(z.shape[0]):
        out[p] = _loglik(z[p], habit_k[p], habit[p], cat[p], sc[p], intent[p], dwell)
    return out


@njit(cache=True)
def pcn_step(z0, base, reset, a, s, habit_k, habit, cat, sc, intent, dwell, xi, xr, z, ll, c, beta, nxi, nxr,
             logu):
    """One preconditioned Crank-Nicolson step on every particle's Gaussian draws, in place: the
    proposal ``c xi + beta nxi`` (and the same for ``xr`` at the steps that reset, whose normal
    draws ``nxr`` are the rows of (count of resets, K), in the order of the particles and steps),
    accepted when ``logu[p]`` is below the change in the events' log-likelihood ``ll`` (n,). With
    ``c = sqrt(1 - beta^2)`` the proposal keeps the draws' prior, so that is the whole ratio.
    Returns how many were accepted."""
    n, steps, k = xi.shape
    xi2, xr2, z2 = np.empty((steps, k)), np.empty((steps, k)), np.empty((steps, k))
    row, accepted = 0, 0
    for p in range(n):
        for i in range(steps):
            for j in range(k):
                xi2[i, j] = c * xi[p, i, j] + beta * nxi[p, i, j]
            if reset[p, i]:
                for j in range(k):
                    xr2[i, j] = c * xr[p, i, j] + beta * nxr[row, j]
                row += 1
            else:
                xr2[i] = xr[p, i]
        _replay(z0[p], base[p], reset[p], a, s, xi2, xr2, z2, 0)
        ll2 = _loglik(z2, habit_k[p], habit[p], cat[p], sc[p], intent[p], dwell)
        if logu[p] < ll2 - ll[p]:
            xi[p], xr[p], z[p], ll[p] = xi2, xr2, z2, ll2
            accepted += 1
    return accepted


@njit(cache=True)
def base_step(rows, since, b2, log_prior, z0, base, reset, a, s, habit_k, habit, cat, sc, intent, dwell, xi, xr,
              z, ll, logu):
    """One Metropolis step on the base points of particles ``rows``, in place: particle
    ``rows[j]`` takes the base point ``b2[j]`` from its step ``since[j]`` on, accepted when
    ``logu[j]`` is below the change in the events' log-likelihood plus ``log_prior[j]`` (the
    proposal's prior ratio; -inf refuses it). Returns (len(rows),) which were accepted."""
    steps, k = xi.shape[1], xi.shape[2]
    use, z2 = np.empty((steps, k)), np.empty((steps, k))
    ok = np.zeros(len(rows), np.bool_)
    for j in range(len(rows)):
        p, first = rows[j], since[j]
        use[:first] = base[p, :first]
        use[first:] = b2[j]
        z2[:first] = z[p, :first]
        _replay(z0[p] if first == 0 else z[p, first - 1], use, reset[p], a, s, xi[p], xr[p], z2, first)
        ll2 = _loglik(z2, habit_k[p], habit[p], cat[p], sc[p], intent[p], dwell)
        if logu[j] < ll2 - ll[p] + log_prior[j]:
            base[p], z[p], ll[p] = use, z2, ll2
            ok[j] = True
    return ok

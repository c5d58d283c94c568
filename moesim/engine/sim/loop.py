"""The iteration-level event loop of one engine instance.

Each pass of the loop is one engine step, scheduled the way vLLM's V1 scheduler and
Sarathi-Serve (Agrawal et al. OSDI'24) do it:

1. Running decodes each take one token of the step's budget (``max_num_batched_tokens``);
   a decode whose next token needs a new KV block gets one, and when the cache has none left
   the most recently admitted running request is preempted and its blocks freed; it returns to
   the head of the queue and later recomputes its prompt and the tokens it had generated
   (vLLM's default preemption mode, recompute: Kwon et al. SOSP'23 section 4.5; vLLM
   ``Scheduler._preempt``). No new request is admitted in a step that preempted.
2. Partly prefilled requests continue with chunks of the remaining budget.
3. Waiting requests are admitted first come first served while the budget, the sequence cap
   (``max_num_seqs``) and the KV cache allow; admission reserves the prompt's blocks
   (``admission='prompt'``, vLLM's ``can_allocate``) or the blocks of prompt plus output
   (``admission='reserve'``, TensorRT-LLM's GUARANTEED_NO_EVICT: never preempts).

With ``schedule='prefill-first'`` a step carries prefill chunks alone whenever one can be
scheduled and decodes otherwise (SGLang's default, prefill batches before decode batches).

The loop keeps no per-request objects: per-request state lives in flat arrays; decoders are
tracked in aggregate (their count, the sum of their contexts, and how many of them cross a
KV-block boundary at each step, by residue mod the block size), and each decoder's finishing
step is known when it starts decoding. Runs of decode-only steps between events (an arrival
that can be admitted, a finish, a preemption) are advanced in one vectorised numpy call.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from heapq import heappop, heappush

import numpy as np

BULK_MAX_STEPS = 4096  # longest run of decode-only steps advanced in one numpy call
NUMPY_MIN_STEPS = 24  # shorter runs are cheaper in plain Python, step by step
INF = float("inf")


@dataclass
class InstanceRun:
    """What one instance did. Per-request arrays are [N] in the order of the input traffic;
    per-step arrays are [steps] in time order."""

    arrival_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    preemptions: np.ndarray
    rejected: np.ndarray
    step_end_s: np.ndarray
    step_s: np.ndarray
    step_decode_seqs: np.ndarray
    step_prefill_tokens: np.ndarray
    step_kv_blocks: np.ndarray
    resume_gaps_s: np.ndarray  # token gaps that span a preemption (added to per-token TPOT)
    kv_blocks: int
    free_blocks_at_end: int  # equals kv_blocks: every block came back


def run_instance(
    arrival_s: np.ndarray,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    table,
    *,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    block_size: int,
    kv_blocks: int,
    admission: str = "prompt",
    schedule: str = "mixed",
    kv_ready: bool = False,
    concurrency: int | None = None,
    ramp_up_s: float = 0.0,
) -> InstanceRun:
    """Simulate one instance serving the requests (in arrival order).

    kv_ready : the requests arrive with their prompt's KV and first token (the decode pool of a
        disaggregated deployment): they join the decodes of the next step
    concurrency : closed loop: this many clients, each sending its next request when the
        previous one finishes; with finite ``arrival_s`` a request also waits for its arrival
        time (an open loop capped at ``concurrency`` in flight, ``vllm bench serve
        --request-rate R --max-concurrency C``); without, the first ``concurrency`` requests
        arrive evenly over ``ramp_up_s``
    """
    n_all = int(len(input_tokens))
    bs = int(block_size)
    K = int(kv_blocks)
    in_np = np.asarray(input_tokens, dtype=np.int64)
    out_np = np.asarray(output_tokens, dtype=np.int64)
    # A request whose prompt and output never fit the cache can never run: it is rejected.
    rejected = -(-(in_np + out_np) // bs) > K
    keep = np.flatnonzero(~rejected)
    N = int(keep.size)
    first = array("d", [np.nan]) * N
    fin = array("d", [np.nan]) * N
    npre = array("q", [0]) * N
    closed = concurrency is not None
    if closed:
        # A request is sent when a client is free and not before its own arrival time (none:
        # at once; the first clients start evenly over the ramp-up).
        c0 = min(int(concurrency), N)
        times = np.asarray(arrival_s, dtype=float)[keep]
        if times.size and np.all(np.isfinite(times)):
            earliest = times.tolist()
        else:
            earliest = [0.0] * N
            for i in range(c0):
                earliest[i] = ramp_up_s * i / c0
        arr = array("d", [np.inf]) * N
        for i in range(c0):
            arr[i] = earliest[i]
        issued = c0
    else:
        arr = array("d", np.asarray(arrival_s, dtype=float)[keep].tolist())
        issued = N

    inp = in_np[keep].tolist()
    outp = out_np[keep].tolist()
    B = int(max_num_batched_tokens)
    M = int(max_num_seqs)
    reserve = admission == "reserve"
    pfirst = schedule == "prefill-first" and not kv_ready  # a decode pool only decodes

    # Step-cost lookups as flat Python lists (scalar indexing of numpy is slow in a loop).
    a_dec, a_mix = table.tok_inner_s[0].tolist(), table.tok_inner_s[1].tolist()
    b_dec, b_mix = table.tok_comm_s[0].tolist(), table.tok_comm_s[1].tolist()
    o_dec, o_mix = table.tok_once_s[0].tolist(), table.tok_once_s[1].tolist()
    head_s = table.head_s.tolist()
    dec_rows = table.dec_s.tolist()
    dec_np = table.dec_s
    inv_du = 1.0 / table.dec_du
    g_last = table.dec_s.shape[1] - 2
    pref_rows = table.pref_s.tolist()
    inv_dc = 1.0 / table.pref_dc
    gc_last = table.pref_s.shape[1] - 2

    # Per-request state.
    state = bytearray(N)  # 0 waiting, 1 prefilling, 2 decoding, 3 finished
    gen = array("q", [1 if kv_ready else 0]) * N  # tokens generated so far
    prog = array("q", [0]) * N  # prefill tokens computed of tgt
    tgt = array("q", [0]) * N  # tokens this prefill must compute (prompt + generated)
    held = array("q", [0]) * N  # blocks held (prefilling; every state under 'reserve')
    ds0 = array("q", [0]) * N  # decode step index at which the request started decoding
    base = array("q", [0]) * N  # KV tokens it held then
    fstep = array("q", [0]) * N  # decode step index of its last token
    last = array("d", [0.0]) * N  # time of its last token before a preemption

    # Step log.
    log_end, log_dt = array("d"), array("d")
    log_dec, log_pre, log_kv = array("q"), array("q"), array("q")
    resume = array("d")
    end_append, dt_append, kv_append = log_end.append, log_dt.append, log_kv.append
    dec_append, pre_append = log_dec.append, log_pre.append

    now = 0.0
    ds = 0  # decode steps done so far (the index of the next decode step)
    nxt = 0  # requests arrived: [0, nxt)
    head = 0  # next new request to admit
    done = 0
    requeue: deque = deque()  # preempted requests, oldest first
    prefilling: list = []  # admission order
    order: list = []  # admission order of running requests (stale entries skipped)
    fin_at: dict = {}  # decode step index -> requests finishing there
    fheap: list = []  # the keys of fin_at
    D = 0  # decoding requests
    asum = 0  # sum over decoders of base - ds0: their total context is asum + D * ds
    cnt = [0] * bs  # decoders by (base - ds0) mod block size
    free = K
    ch_r: list = []
    ch_c: list = []
    joiners: list = []
    last_dt = 0.0  # the latest step's time (guides the choice of numpy or Python runs)

    while done < N:
        if nxt < issued and arr[nxt] <= now:
            nxt = bisect_right(arr, now, nxt, issued)
        if D == 0 and not prefilling and not requeue and head == nxt:
            if head >= issued:
                raise RuntimeError("simulation stalled with requests outstanding")
            if arr[head] > now:
                now = arr[head]
            nxt = bisect_right(arr, now, head, issued)
            continue

        joined = 0
        if kv_ready and not requeue:
            joiners.clear()
            # Requests arriving with their KV join this step's decodes; their first token
            # here (the request's second) is timed apart: its gap began in the other pool.
            while head < nxt and D + len(prefilling) < M:
                r = head
                b = inp[r]
                if reserve:
                    nb = -(-(b + outp[r]) // bs)
                else:  # its blocks, and this step's new blocks for every decode, itself too
                    nb = -(-b // bs) + cnt[(-ds) % bs] + (1 if b % bs == 0 else 0)
                if nb > free:
                    break
                if not reserve:
                    nb = -(-b // bs)
                head += 1
                free -= nb
                held[r] = nb
                state[r] = 2
                ds0[r] = ds
                base[r] = b
                asum += b - ds
                cnt[(b - ds) % bs] += 1
                D += 1
                order.append(r)
                joiners.append(r)
                joined += 1
                fs = ds + outp[r] - gen[r] - 1
                fstep[r] = fs
                if fs in fin_at:
                    fin_at[fs].append(r)
                else:
                    fin_at[fs] = [r]
                    heappush(fheap, fs)
        nseq = D + len(prefilling)

        # Can a waiting request be admitted now?
        if nseq >= M:
            admissible = False
        elif requeue or (head < nxt and not kv_ready):
            r = requeue[0] if requeue else head
            need_b = -(-(inp[r] + outp[r]) // bs) if reserve else -(-(inp[r] + gen[r]) // bs)
            admissible = need_b <= free
        elif head < nxt:
            admissible = False  # kv_ready arrivals that did not fit above
        else:
            admissible = None  # nobody waiting: the next arrival is an event

        # ---------------------------------------------------------- decode-only runs
        # Until the next finish, admissible arrival or KV shortage nothing changes but the
        # decoders' contexts: advance those steps together (numpy for long runs).
        if D and not prefilling and not admissible and fheap and not joined:
            kmax = fheap[0] - ds + 1  # through the next finishing step
            t_next = arr[nxt] if (admissible is None and nxt < issued) else INF
            a0 = a_dec[D]
            b0 = b_dec[D]
            o0 = o_dec[D] + head_s[D]
            k = 0
            if kmax >= NUMPY_MIN_STEPS and (t_next - now) >= NUMPY_MIN_STEPS * last_dt:
                if kmax > BULK_MAX_STEPS:
                    kmax = BULK_MAX_STEPS
                j = np.arange(kmax)
                if not reserve:
                    cum = np.cumsum(np.asarray(cnt)[(-(ds + j)) % bs])
                    k_kv = int(np.searchsorted(cum, free, side="right"))
                    if k_kv < kmax:
                        kmax = k_kv
                        j = j[:kmax]
                if kmax:
                    x = (asum + D * (ds + j)) * (inv_du / D)
                    i = np.minimum(x.astype(np.int64), g_last)
                    row = dec_np[D]
                    lo = row[i]
                    dt = np.maximum(a0 + lo + (x - i) * (row[i + 1] - lo), b0) + o0
                    ends = now + np.cumsum(dt)
                    if t_next < INF:
                        k_arr = int(np.searchsorted(ends, t_next, side="left")) + 1
                        if k_arr < kmax:
                            kmax = k_arr
                    k = kmax
                    now = float(ends[k - 1])
                    last_dt = float(dt[k - 1])
                    log_end.frombytes(ends[:k].tobytes())
                    log_dt.frombytes(dt[:k].tobytes())
                    log_dec.extend([D] * k)
                    log_pre.extend([0] * k)
                    if reserve:
                        log_kv.extend([K - free] * k)
                    else:
                        log_kv.frombytes((K - free + cum[:k]).astype(np.int64).tobytes())
                        free -= int(cum[k - 1])
                    ds += k
            else:
                row = dec_rows[D]
                inv = inv_du / D
                c_tot = asum + D * ds
                used = K - free
                while k < kmax:
                    if not reserve:
                        need = cnt[(-ds) % bs]
                        if need > free:
                            break
                        free -= need
                        used += need
                    x = c_tot * inv
                    i = int(x)
                    if i > g_last:
                        i = g_last
                    lo = row[i]
                    inner = a0 + lo + (x - i) * (row[i + 1] - lo)
                    dt = (inner if inner > b0 else b0) + o0
                    now += dt
                    ds += 1
                    c_tot += D
                    k += 1
                    end_append(now)
                    dt_append(dt)
                    kv_append(used)
                    if now >= t_next:
                        break
                if k:
                    last_dt = dt
                    log_dec.extend([D] * k)
                    log_pre.frombytes(bytes(8 * k))
            if k:
                s_old = ds - 1
                if fheap[0] == s_old:
                    heappop(fheap)
                    for r in fin_at.pop(s_old):
                        if state[r] == 2 and fstep[r] == s_old:
                            state[r] = 3
                            fin[r] = now
                            D -= 1
                            b = base[r]
                            s0 = ds0[r]
                            asum -= b - s0
                            cnt[(b - s0) % bs] -= 1
                            free += held[r] if reserve else -(-(b + s_old - s0 + 1) // bs)
                            done += 1
                            if closed and issued < N:
                                e = earliest[issued]
                                arr[issued] = now if now > e else e
                                issued += 1
                continue

        # ---------------------------------------------------------- one step
        run_dec = D > 0
        if pfirst and run_dec and (prefilling or admissible):
            run_dec = False
        preempted = False
        if run_dec and not reserve:
            need = cnt[(-ds) % bs]
            while need > free:
                r = order.pop()
                st = state[r]
                if st == 2:
                    b = base[r]
                    s0 = ds0[r]
                    tok = b + ds - s0
                    free += -(-tok // bs)
                    if tok % bs == 0:
                        need -= 1
                    D -= 1
                    asum -= b - s0
                    cnt[(b - s0) % bs] -= 1
                    gen[r] += ds - s0
                    last[r] = now
                    fstep[r] = -1
                elif st == 1:
                    free += held[r]
                    prefilling.remove(r)
                else:
                    continue  # finished long ago: a stale entry
                state[r] = 0
                npre[r] += 1
                requeue.appendleft(r)
                preempted = True
            free -= need
            if D == 0:
                run_dec = False
            if joined and preempted:
                joined = sum(1 for r in joiners if state[r] == 2)
        budget = B - D if (run_dec and not pfirst) else B
        ch_r.clear()
        ch_c.clear()
        pref_t = 0.0
        P = 0
        for r in prefilling:
            if budget <= 0:
                break
            c = tgt[r] - prog[r]
            if c > budget:
                c = budget
            row = pref_rows[c]
            x = prog[r] * inv_dc
            i = int(x)
            if i > gc_last:
                i = gc_last
            lo = row[i]
            pref_t += lo + (x - i) * (row[i + 1] - lo)
            ch_r.append(r)
            ch_c.append(c)
            budget -= c
            P += c
        if not preempted:
            nseq = D + len(prefilling)
            while budget > 0 and nseq < M:
                if requeue:
                    r = requeue[0]
                elif head < nxt and not kv_ready:
                    r = head
                else:
                    break
                t_r = inp[r] + gen[r]
                nb = -(-(inp[r] + outp[r]) // bs) if reserve else -(-t_r // bs)
                if nb > free:
                    break
                if requeue:
                    requeue.popleft()
                else:
                    head += 1
                free -= nb
                held[r] = nb
                state[r] = 1
                tgt[r] = t_r
                prog[r] = 0
                prefilling.append(r)
                order.append(r)
                nseq += 1
                c = t_r if t_r < budget else budget
                lo = pref_rows[c][0]
                pref_t += lo
                ch_r.append(r)
                ch_c.append(c)
                budget -= c
                P += c
        if not run_dec and not ch_r:
            if preempted:
                continue  # everything running was preempted: admit again next pass
            raise RuntimeError("simulation stalled: nothing to schedule")

        dd = D if run_dec else 0
        T = dd + P
        if P:
            # a step with prefill costs at least the decode-only step of its decodes
            a = a_mix[T] if a_mix[T] > a_dec[dd] else a_dec[dd]
            bm = b_mix[T]
            o = o_mix[T]
        else:
            a = a_dec[T]
            bm = b_dec[T]
            o = o_dec[T]
        if dd:
            x = (asum + dd * ds) * inv_du / dd
            i = int(x)
            if i > g_last:
                i = g_last
            row = dec_rows[dd]
            lo = row[i]
            a += lo + (x - i) * (row[i + 1] - lo)
        a += pref_t
        dt = (a if a > bm else bm) + o + head_s[dd + len(ch_r)]
        now += dt
        last_dt = dt
        end_append(now)
        dt_append(dt)
        dec_append(dd - joined)
        pre_append(P)
        kv_append(K - free)

        if joined:
            for r in joiners:
                if state[r] == 2:
                    first[r] = now
        if run_dec:
            ds += 1
        for r, c in zip(ch_r, ch_c, strict=True):
            p = prog[r] + c
            prog[r] = p
            if p < tgt[r]:
                continue
            prefilling.remove(r)
            g = gen[r] + 1
            gen[r] = g
            if g == 1:
                first[r] = now
            else:
                resume.append(now - last[r])
            if g >= outp[r]:
                state[r] = 3
                fin[r] = now
                free += held[r]
                done += 1
                if closed and issued < N:
                    e = earliest[issued]
                    arr[issued] = now if now > e else e
                    issued += 1
                continue
            state[r] = 2
            ds0[r] = ds
            base[r] = p
            asum += p - ds
            cnt[(p - ds) % bs] += 1
            D += 1
            if not reserve:
                held[r] = 0
            fs = ds + outp[r] - g - 1
            fstep[r] = fs
            if fs in fin_at:
                fin_at[fs].append(r)
            else:
                fin_at[fs] = [r]
                heappush(fheap, fs)
        if run_dec:
            s_old = ds - 1
            if fheap and fheap[0] == s_old:
                heappop(fheap)
                for r in fin_at.pop(s_old):
                    if state[r] == 2 and fstep[r] == s_old:
                        state[r] = 3
                        fin[r] = now
                        D -= 1
                        b = base[r]
                        s0 = ds0[r]
                        asum -= b - s0
                        cnt[(b - s0) % bs] -= 1
                        free += held[r] if reserve else -(-(b + s_old - s0 + 1) // bs)
                        done += 1
                        if closed and issued < N:
                            e = earliest[issued]
                            arr[issued] = now if now > e else e
                            issued += 1

    def full(values, fill, dtype):
        out = np.full(n_all, fill, dtype=dtype)
        out[keep] = np.frombuffer(values, dtype=dtype) if isinstance(values, array) else values
        return out

    return InstanceRun(
        arrival_s=full(arr, np.nan, np.float64),
        first_token_s=full(first, np.nan, np.float64),
        finish_s=full(fin, np.nan, np.float64),
        preemptions=full(npre, 0, np.int64),
        rejected=rejected,
        step_end_s=np.frombuffer(log_end, dtype=np.float64).copy(),
        step_s=np.frombuffer(log_dt, dtype=np.float64).copy(),
        step_decode_seqs=_ints(log_dec),
        step_prefill_tokens=_ints(log_pre),
        step_kv_blocks=_ints(log_kv),
        resume_gaps_s=np.frombuffer(resume, dtype=np.float64).copy(),
        kv_blocks=K,
        free_blocks_at_end=free,
    )


def _ints(a: array) -> np.ndarray:
    return np.frombuffer(a, dtype=np.int64).copy()

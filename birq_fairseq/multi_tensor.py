"""fairseq's Adam step as multi-tensor (``torch._foreach_*``) operations: the same numbers, fewer ops.

fairseq's ``Adam.step`` (fairseq/optim/adam.py) loops over the parameters in Python and
issues ~10 small ops for each; for the tiny model (79 tensors, 8 s batches) that loop was
about a tenth of a CPU training update (issue #17's profile). The ``_foreach_`` ops below
apply the very same element-wise arithmetic, in the same order, to all tensors in one call
(on CPU they run the per-tensor kernels from a C++ loop), so parameters and optimizer state
are bit-for-bit those of the loop (tests/test_fast_update.py). The state dict keeps
fairseq's layout (``step`` an int, ``exp_avg``, ``exp_avg_sq``): checkpoints resume either way.
"""

import math
from collections import defaultdict

import torch
from fairseq.optim.adam import Adam


def supports(optimizer) -> bool:
    """True when ``optimizer`` (fairseq's wrapper) is fairseq's own fp32 Adam, the case handled here.

    Anything else (fp16/bf16 parameters, amsgrad, sparse gradients, fused or other optimizers)
    keeps fairseq's own step.
    """
    inner = getattr(optimizer, "optimizer", None)
    if type(inner) is not Adam:
        return False
    for group in inner.param_groups:
        if group.get("amsgrad", False):
            return False
        for p in group["params"]:
            if p.dtype != torch.float32 or (p.grad is not None and p.grad.is_sparse):
                return False
    return True


@torch.no_grad()
def adam_step(adam) -> None:
    """One step of fairseq's ``Adam`` (fp32, no amsgrad), parameters grouped by (group, device, step)."""
    for group in adam.param_groups:
        beta1, beta2 = group["betas"]
        buckets = defaultdict(list)
        for p in group["params"]:
            if p.grad is None:
                continue
            state = adam.state[p]
            if len(state) == 0:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            # Tensors at different step counts (parameters that missed updates) get their own
            # bias correction, as in the loop.
            buckets[(p.device, state["step"])].append(p)
        for (_, step), params in buckets.items():
            grads = [p.grad for p in params]
            exp_avgs = [adam.state[p]["exp_avg"] for p in params]
            exp_avg_sqs = [adam.state[p]["exp_avg_sq"] for p in params]
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
            denoms = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denoms, group["eps"])
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
            step_size = group["lr"] * math.sqrt(bias_correction2) / bias_correction1
            if group["weight_decay"] != 0:
                torch._foreach_add_(params, params, alpha=-group["weight_decay"] * group["lr"])
            torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-step_size)

"""Two solvers of one objective: L2-regularised multinomial logistic regression, as scikit-learn defines it.

    minimise over W, b:   C * sum_i log_loss(x_i W^T + b, y_i) + 0.5 * ||W||^2      (b is not penalised)

`fit_sklearn` is scikit-learn's LogisticRegression (lbfgs) on CPU; `fit_torch_lbfgs` is full-batch
torch.optim.LBFGS on the tensors' device (a GPU when there is one). Both minimise the objective divided by
the number of samples (the same minimiser; scikit-learn does this too, so that `tol` means the same for any
training-set size), start from zeros, and stop when the largest absolute gradient entry falls below `tol`.
With two classes scikit-learn fits one weight vector (binomial logistic regression, whose penalty is not the
two-class multinomial one); the torch solver does the same.

Labels are 0..K-1 and every one of them occurs; the caller maps classes onto that range.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vitcls.errors import VitclsError


@dataclass
class LinearFit:
    """Logits = x @ weight.T + bias, with weight (K, D) and bias (K,); for two classes weight is (1, D) and
    the logits are [0, x @ weight.T + bias] (the binomial model)."""

    weight: Tensor
    bias: Tensor
    n_iter: int
    converged: bool

    def logits(self, x: Tensor) -> Tensor:
        logits = x @ self.weight.T + self.bias
        if self.weight.shape[0] == 1:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return logits


def fit_sklearn(x: Tensor, y: Tensor, C: float, max_iter: int, tol: float, threads: int | None = None) -> LinearFit:
    """`threads`: how many threads scikit-learn's BLAS may use (None: the library's default, every core)."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
    except ImportError as error:
        raise VitclsError(
            "the logistic-regression probe's sklearn backend needs scikit-learn (pip install scikit-learn), "
            "or set probe.backend=torch"
        ) from error
    # The default penalty is L2 in every scikit-learn version (its `penalty` argument is deprecated from 1.8).
    model = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, tol=tol)
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=threads, user_api="blas"):
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x.detach().cpu().double().numpy(), y.detach().cpu().numpy())
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return LinearFit(
        weight=torch.from_numpy(model.coef_).to(x.device),
        bias=torch.from_numpy(model.intercept_).to(x.device),
        n_iter=int(model.n_iter_.max()),
        converged=converged,
    )


def fit_torch_lbfgs(x: Tensor, y: Tensor, num_classes: int, C: float, max_iter: int, tol: float) -> LinearFit:
    x = x.double()
    rows = 1 if num_classes == 2 else num_classes
    weight = torch.zeros(rows, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(rows, dtype=x.dtype, device=x.device, requires_grad=True)
    fit = LinearFit(weight, bias, 0, False)
    penalty = 0.5 / (C * len(x))
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=tol,
        tolerance_change=64 * torch.finfo(x.dtype).eps,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(fit.logits(x), y) + penalty * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    state = optimizer.state[weight]
    n_iter, evaluations = int(state["n_iter"]), int(state["func_evals"])
    # Any other stop is the gradient or the change of the objective falling below its tolerance.
    converged = n_iter < max_iter and evaluations < max_iter * 2
    return LinearFit(weight.detach(), bias.detach(), n_iter, converged)

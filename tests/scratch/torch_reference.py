"""PyTorch is the reference answer: run our NumPy op and torch's on the same float64 data and compare.

Every test of cnnlab.scratch goes through these helpers, so the tolerance and the way we call torch
are decided once. float64 on both sides leaves only summation-order differences (~1e-15), far below
the tolerance, while a wrong index or a missing term is off by O(1).
"""

import contextlib

import numpy as np
import torch

RTOL = 1e-5
ATOL = 1e-8


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str = "value") -> None:
    """Assert same shape and values within RTOL/ATOL, naming what was compared on failure."""
    assert np.shape(actual) == np.shape(expected), f"{what}: shape {np.shape(actual)} != {np.shape(expected)}"
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


def to_torch(array: np.ndarray | None, requires_grad: bool = False) -> torch.Tensor | None:
    """float64 torch tensor holding the same numbers (None passes through, e.g. for a missing bias)."""
    if array is None:
        return None
    return torch.tensor(np.asarray(array), dtype=torch.float64, requires_grad=requires_grad)


@contextlib.contextmanager
def single_threaded():
    """Run torch on one thread inside the block, then restore the thread count.

    The test tensors are tiny; on a busy 2-core machine torch's thread pool then spends ~100x the
    work waiting for its threads (80 ms instead of 0.2 ms for one backward pass).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_forward(our_op, torch_op, *arrays: np.ndarray | None, **kwargs) -> np.ndarray:
    """Call our op and the torch.nn.functional op with the same arrays and keyword arguments; assert equal."""
    ours = our_op(*arrays, **kwargs)
    with torch.no_grad(), single_threaded():
        theirs = torch_op(*(to_torch(a) for a in arrays), **kwargs).numpy()
    assert_close(ours, theirs, f"{our_op.__name__} vs torch {torch_op.__name__} with {kwargs}")
    return ours


def check_conv2d_backward(our_backward, x, weight, bias, seed: int = 0, **kwargs) -> None:
    """Compare our (grad_x, grad_weight, grad_bias) with torch autograd of conv2d for a random grad_out."""
    x_t, weight_t = to_torch(x, requires_grad=True), to_torch(weight, requires_grad=True)
    bias_t = to_torch(bias if bias is not None else np.zeros(weight.shape[0]), requires_grad=True)
    with single_threaded():
        out = torch.nn.functional.conv2d(x_t, weight_t, bias_t, **kwargs)  # (N, C_out, H_out, W_out)
        # A random upstream gradient, not ones: ones would hide a transposed or misplaced index.
        grad_out = np.random.default_rng(seed).standard_normal(tuple(out.shape))
        out.backward(to_torch(grad_out))

    grad_x, grad_weight, grad_bias = our_backward(grad_out, x, weight, **kwargs)
    assert_close(grad_x, x_t.grad.numpy(), f"grad_x with {kwargs}")
    assert_close(grad_weight, weight_t.grad.numpy(), f"grad_weight with {kwargs}")
    assert_close(grad_bias, bias_t.grad.numpy(), f"grad_bias with {kwargs}")

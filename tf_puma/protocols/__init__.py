"""The protocol library: functions on `Shared` values that read like the papers.

| module       | protocols                                                     |
|--------------|---------------------------------------------------------------|
| arithmetic   | add, sub, neg, add_public, mul_public, mul, matmul, trunc       |
| boolean      | XOR sharing, and_, addends, msb and a2b (Kogge-Stone), b2a     |
| compare      | less, greater, equal, select, relu, maximum, reduce_max, argmax, argmax_index |
| tensor       | local shape operations: stack, repeat, concat, reshape, ...     |
| approx       | polynomial, exp, gelu, silu, reciprocal, rsqrt                  |
| nn           | softmax, layer_norm, rms_norm (wide range), embedding, sigmoid, tanh, silu |
"""

from tf_puma.protocols import arithmetic as _arithmetic  # noqa: E402,F401 - Shared's operators

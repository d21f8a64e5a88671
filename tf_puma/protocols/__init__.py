"""The protocol library: functions on `Shared` values that read like the papers.

| module       | protocols                                                     |
|--------------|---------------------------------------------------------------|
| arithmetic   | add, sub, neg, add_public, mul_public, mul, matmul, trunc       |
"""

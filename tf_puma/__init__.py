"""tf-puma: secure inference of pretrained transformers in TensorFlow (PUMA, 3-party RSS).

Typical client code:

    import tf_puma
    tf_puma.connect("cluster.json")
    model = tf_puma.load("minilm-secure")          # a secure SavedModel from `tf-puma convert`
    outputs = model(input_ids=ids, attention_mask=mask)

or protocols directly:

    @tf.function
    def secure_affine(x, w):
        return tf_puma.reveal(tf_puma.share(x) @ tf_puma.share(w))
"""

from tf_puma import costs
from tf_puma.cluster import Cluster, LocalCluster, connect
from tf_puma.fixedpoint import FixedPoint
from tf_puma.protocols.arithmetic import (add, add_public, matmul, mul, mul_public, neg, sub,
                                          trunc)
from tf_puma.secure_model import SecureModel, load
from tf_puma.sharing import Shared, reveal, reveal_ring, share

__all__ = ["Cluster", "FixedPoint", "LocalCluster", "SecureModel", "Shared", "add", "add_public",
           "connect", "costs", "load", "matmul", "mul", "mul_public", "neg", "reveal",
           "reveal_ring", "share", "sub", "trunc"]
__version__ = "0.1.0"

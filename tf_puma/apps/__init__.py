"""Applications built on the library, and the fixtures they share with tests and benchmarks.

| module      | what                                                              |
|-------------|-------------------------------------------------------------------|
| `cli`       | `tf-puma convert / party / run` (the console script)              |
| `party`     | one party's TensorFlow server with its share bundle                |
| `demo`      | `make demo`: the real MiniLM, converted and served by three parties |
| `hf`        | fixtures: transformers models exported as SavedModels, tokenizers  |
| `text_data` | fixtures: the review sentences and news text shipped in packages   |

The library (`tf_puma.*` outside this folder, `tf_puma.rewrites`) never imports from here: the
import graph runs apps -> rewrites -> protocols -> sharing -> runtime -> ops.
"""

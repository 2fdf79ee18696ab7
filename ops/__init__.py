"""Operations: the dupn CLI, settings, embedded broker, topics, replay, demo, metrics."""

import os

# torch's OpenMP threads spin-wait by default; on a 2-core machine shared with a broker or a
# worker that turns a 0.1 s training step into 10 s. Bounded spinning keeps idle speed.
# Must be set before torch is imported, hence here.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
# numpy's OpenBLAS starts one spinning thread per core on its first matmul; beside torch's threads
# (and a broker) on 2 cores that made the stream encoder's small numpy matmuls 5x slower, measured.
# The encoder's numpy work is small: one BLAS thread. Must be set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

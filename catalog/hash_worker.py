"""A hashing worker process of ``catalog.hash_pool``: ``python -m catalog.hash_worker ROOT``.

Says ``READY`` once started, then reads tasks ``(paths, algorithms)`` from its standard input
(pickles, one after another) and answers each with ``hash_many``'s dict on its standard output,
in order. It ends at the end of its input: when the pool closes it, and as well when the parent
dies however it died, since only the parent holds the other end of the pipe.
"""

from __future__ import annotations

import pickle
import sys

from catalog.fixity import hash_many
from catalog.storage import LocalStorage

READY = b"R"


def main(argv: list[str]) -> int:
    storage = LocalStorage(argv[1])
    tasks, answers = sys.stdin.buffer, sys.stdout.buffer
    answers.write(READY)  # imports done: tasks are answered from now on
    answers.flush()
    while True:
        try:
            paths, algorithms = pickle.load(tasks)
        except EOFError:
            return 0
        answer = hash_many(storage, paths, algorithms, workers=1)
        try:
            pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
            answers.flush()
        except BrokenPipeError:  # the parent is gone: nobody to answer
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

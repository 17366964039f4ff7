"""Publish one CleanRL seed repo to the test Hub with CleanRL's own ``push_to_hub`` (unmodified,
imported from ``../shared/data/cleanrl``), as ``dqn.py --upload-model`` would at the end of training.

Run as ``python tests/cleanrl_publish.py CLEANRL_DIR RUN_FOLDER REPO_ID SEED [CARD_ARGS...]``:
``push_to_hub`` uploads ``sys.argv[0]`` as the training script and writes ``sys.argv[1:]`` into
the card's command, so the process's argv is made the one ``dqn.py`` had. The run folder (events
files, a weights file) is made by the test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    cleanrl, folder, repo_id, seed, *card_args = sys.argv[1:]
    sys.path.insert(0, cleanrl)
    from cleanrl_utils.huggingface import push_to_hub

    args = argparse.Namespace(
        exp_name="dqn",
        seed=int(seed),
        torch_deterministic=True,
        cuda=True,
        track=False,
        env_id="CartPole-v1",
        total_timesteps=500000,
        learning_rate=2.5e-4,
        save_model=True,
        upload_model=True,
        hf_entity="",
    )
    sys.argv = [str(Path(cleanrl) / "cleanrl" / "dqn.py"), *card_args]
    episodic_returns = [500.0, 490.0 + int(seed), 500.0]
    push_to_hub(args, episodic_returns, repo_id, "DQN", folder, "")


if __name__ == "__main__":
    main()

"Run by tests/test_distributed.py (directly or under torchrun): train the tiny config, then save this rank's weights."
import os, sys
from pathlib import Path
import torch
from hjepa_nb.config import tiny_config
from hjepa_nb.callbacks import make_learner
from hjepa_nb.distributed import cleanup_distributed, setup_distributed

if __name__ == '__main__':
    out, ov = sys.argv[1], sys.argv[2:]
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"pid{os.environ.get('RANK', 0)}").write_text(str(os.getpid()))
    cfg = tiny_config(out, *ov)
    setup_distributed(cfg)
    learn = make_learner(cfg, quiet=True)
    learn.fit()
    torch.save(learn.model.state_dict(), Path(out) / f'rank{learn.rank}.pt')
    cleanup_distributed()

"Run by tests/test_distributed.py (directly or under torchrun): train the tiny config, then save this rank's weights."
import os, sys
from pathlib import Path
import torch
from hjepa_nb.train import Trainer, tiny_config
from hjepa_nb.distributed import cleanup_distributed

if __name__ == '__main__':
    out, ov = sys.argv[1], sys.argv[2:]
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"pid{os.environ.get('RANK', 0)}").write_text(str(os.getpid()))
    tr = Trainer(tiny_config(out, *ov), quiet=True)
    tr.fit()
    torch.save(tr.model.state_dict(), Path(out) / f'rank{tr.rank}.pt')
    cleanup_distributed()

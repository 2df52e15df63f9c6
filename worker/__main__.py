"""`python -m worker [run|migrate|locks|workers|summary] ...`: see `worker.cli`."""

from worker.cli import main

raise SystemExit(main())

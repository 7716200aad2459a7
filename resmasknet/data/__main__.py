"""`python -m resmasknet.data [n] [examples.png]`: the generated data's baseline check, printed (a linear probe on
raw pixels must stay low, a small CNN must learn; see `resmasknet.data._baselines`)."""

from resmasknet.data._baselines import main

raise SystemExit(main())

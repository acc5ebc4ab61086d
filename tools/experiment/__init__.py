"""The paper's experiments, run by ``fcnwild adapt`` and ``fcnwild demo``.

- ``settings``: solver settings per stage and the SolverParameter they become
  (the alternating solver's loss terms included);
- ``config``: an experiment (data, architecture, per-stage settings), its stages
  and the net/solver prototxt of each; the embedded synthetic benchmark's;
- ``paper``: the paper's experiments on real datasets, written to ``prototxt/``;
- ``class_sizes``: the source class-size statistics and target image-level
  labels that category-specific adaptation needs;
- ``scoring``: scoring a stage's weights on the labelled target split;
- ``run``: running (or resuming) the stages in an output folder.
"""

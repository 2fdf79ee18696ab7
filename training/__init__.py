"""Research code, apart from serving: the simulator, datasets, training, baselines, evaluation, Taobao reader."""

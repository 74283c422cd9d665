"""Workers: the execution manager, the executor process pool and the executor process."""

"""Launching runs on clusters: the Slurm script generator (``llmft slurm``) and its sbatch template."""

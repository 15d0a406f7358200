"""bioinstruct: BioInstruct (Tran et al., JAMIA 2024) as software for HPC clusters."""

__version__ = "0.1.0"

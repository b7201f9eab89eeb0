"""Evaluation: OPE metrics exactly as EVALUATION.md defines them; LSOTB-TIR, PTB-TIR and synthetic readers."""

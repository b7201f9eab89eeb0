"""Evaluation: OPE metrics exactly as docs/evaluation.md defines them; LSOTB-TIR, PTB-TIR and synthetic readers."""

"""Speed benchmarks: `python -m hrm_agent bench {env,model,train,fused} --json`."""

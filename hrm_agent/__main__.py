from hrm_agent.cli import main

main()

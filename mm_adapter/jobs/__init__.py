"""The jobs: one library function per task, each taking a config dataclass (``configs/``, one module per
concern) and returning a result object. The ``mm-adapter`` command, tests and the benchmarks call these.

    train_alpaca.train_alpaca(TrainAlpacaConfig) -> TrainResult
    train_scienceqa.train_scienceqa(TrainScienceQAConfig) -> ScienceQATrainResult
    eval_scienceqa.eval_scienceqa(EvalScienceQAConfig) -> EvalResult
    mm_adapter.eval.table.build_table(TableConfig) -> TableResult
    generate.generate(GenerateConfig) -> GenerateResult
    demo.demo(DemoConfig) -> Prediction
    serve.serve(ServeConfig) -> None (until interrupted)
    convert.convert(ConvertConfig) -> Path
    main_job.main_job(MainConfig) -> MainResult
    ablate.ablate_scienceqa(AblateConfig) -> AblateResult
    plan.plan(PlanConfig) -> PlanResult
    push.push(PushConfig) -> str (the repository's URL)
    synthetic_data.synthetic_images / synthetic_video / synthetic_audio(SyntheticDataConfig) -> SyntheticDataResult
    synthetic_data.spoken_context(SpokenContextConfig) -> SyntheticDataResult
"""
